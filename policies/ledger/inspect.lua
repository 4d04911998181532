-- inspect: KEYS = {C}. Read-only (what `spendgate reconcile` compares with the store). Reply:
-- {exists, spent, reserved, ver, age_ms, live_amount, live_n, stale_amount, stale_n} where age_ms is the time
-- since the last settle (-1: none), live holds expire at or after now, and stale ones (expired, or with no
-- expiry entry at all) are what the next write to the counter would purge. reserved - live - stale is
-- reserved money no hold backs. Sums are Lua doubles: exact below 2^53 nano-USD (as common.lua says).
local c = KEYS[1]
local now = now_ms()
local exists = redis.call('EXISTS', c)
local f = redis.call('HMGET', c, 'spent', 'reserved', 'ver', 'at')
local live, live_n, stale, stale_n = 0, 0, 0, 0
local all = redis.call('HGETALL', c)
for i = 1, #all, 2 do
  local name = all[i]
  if string.sub(name, 1, 2) == 'h:' then
    local amount = tonumber(all[i + 1]) or 0
    local expires = redis.call('ZSCORE', c .. HOLDS, string.sub(name, 3))
    if expires and tonumber(expires) >= now then
      live, live_n = live + amount, live_n + 1
    else
      stale, stale_n = stale + amount, stale_n + 1
    end
  end
end
local age = -1
if f[4] then
  age = math.max(0, now - tonumber(f[4]))
end
return {exists, f[1] or '0', f[2] or '0', f[3] or '0', fmt(age), fmt(live), live_n, fmt(stale), stale_n}
