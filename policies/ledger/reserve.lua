-- reserve: KEYS = {R, [M,] C1..Cn}; ARGV = {rid, amount, ttl_ms, force, guard, limit1, ttl1, ..., limitn, ttln}
-- Reply: {ok, refused index (0 = none), spent1, reserved1, ...}. All or nothing unless force = '1'.
-- guard = '1': M is the seeded marker of the counters' slot; without it the counters were never rebuilt from
-- the store in this Redis's life (it restarted empty or was flushed), so nothing is reserved: reply {-1}.
local r, rid, amount, ttl_ms, force = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local first = 2
if ARGV[5] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    return {-1}
  end
  first = 3
end
local counters = {}
for i = first, #KEYS do
  counters[i - first + 1] = KEYS[i]
end
local now = now_ms()
for _, c in ipairs(counters) do
  purge(c, now)
end
local existing = redis.call('HGET', r, 'state')
if existing and (existing ~= 'live' or is_live(r, now)) then
  return append_states({1, 0}, counters)  -- same id again: idempotent, nothing added
end
local want = tonumber(amount)
local refused = 0
for i, c in ipairs(counters) do
  local s = redis.call('HMGET', c, 'spent', 'reserved')
  if (tonumber(s[1]) or 0) + (tonumber(s[2]) or 0) + want > tonumber(ARGV[4 + 2 * i]) then
    refused = i
    break
  end
end
if refused > 0 and not force then
  return append_states({0, refused}, counters)
end
local expires = now + ttl_ms
for i, c in ipairs(counters) do
  redis.call('HINCRBY', c, 'reserved', amount)
  redis.call('HSET', c, 'h:' .. rid, amount)
  redis.call('ZADD', c .. HOLDS, fmt(expires), rid)
  touch(c, ARGV[5 + 2 * i])
end
redis.call('DEL', r)
redis.call('HSET', r, 'state', 'live', 'amount', amount, 'expires', fmt(expires), 'keys', cjson.encode(counters))
-- The key outlives the expiry a little; `expires` is what decides (same clock as the holds' scores).
redis.call('PEXPIREAT', r, fmt(expires + 60000))
return append_states({1, refused}, counters)
