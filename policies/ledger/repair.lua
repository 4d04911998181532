-- repair: KEYS = {C}; ARGV = {expected_ver, spent ('' = leave spent alone), ttl}. Reply: {applied, spent,
-- reserved, ver}. What `spendgate reconcile` writes, in one atomic step:
-- 1. stale holds (expired, or with no expiry entry) are dropped and `reserved` is set to the sum of the live
--    holds: computed here from the holds themselves, so it is right whoever else runs it, however often.
-- 2. `spent` is SET (never incremented) to the store's total only if `ver` still equals expected_ver: a settle
--    or another reconciler since the caller read the counter turns this into a no-op (applied = 0), and the
--    caller reads again. Three reconcilers at once: the first applies, the others find nothing left to do.
local c, expected, spent = KEYS[1], ARGV[1], ARGV[2]
local now = now_ms()
local z = c .. HOLDS
if redis.call('EXISTS', c) == 1 then
  purge(c, now)
  local live = 0
  local all = redis.call('HGETALL', c)
  for i = 1, #all, 2 do
    local name = all[i]
    if string.sub(name, 1, 2) == 'h:' then
      if redis.call('ZSCORE', z, string.sub(name, 3)) then
        live = live + (tonumber(all[i + 1]) or 0)
      else
        redis.call('HDEL', c, name)  -- a hold with no expiry entry would never be purged
      end
    end
  end
  redis.call('HSET', c, 'reserved', fmt(live))
end
local applied = 0
if spent ~= '' and (redis.call('HGET', c, 'ver') or '0') == expected then
  redis.call('HSET', c, 'spent', spent)
  redis.call('HINCRBY', c, 'ver', 1)
  touch(c, ARGV[3])
  applied = 1
end
local f = redis.call('HMGET', c, 'spent', 'reserved', 'ver')
return {applied, f[1] or '0', f[2] or '0', f[3] or '0'}
