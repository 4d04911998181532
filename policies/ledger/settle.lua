-- settle: KEYS = {R, C1..Cn}; ARGV = {rid, actual, marker_ttl_ms, ttl1..ttln}. Reply: {spent1, reserved1, ...}
-- Idempotent per rid; when the reservation is gone (expired, released) the actual spend is still added once.
local r, rid, actual, marker_ttl_ms = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local counters = {}
for i = 2, #KEYS do
  counters[i - 1] = KEYS[i]
end
local now = now_ms()
for _, c in ipairs(counters) do
  purge(c, now)
end
local st = redis.call('HMGET', r, 'state', 'keys')
if st[1] == 'settled' then
  return append_states({}, counters)
end
if is_live(r, now) then
  -- The reservation's own counters (same hash slot as R) and the given ones, in case they differ.
  for _, c in ipairs(cjson.decode(st[2])) do
    drop_hold(c, rid)
  end
  for _, c in ipairs(counters) do
    drop_hold(c, rid)
  end
end
for i, c in ipairs(counters) do
  redis.call('HINCRBY', c, 'spent', actual)
  -- ver: every write of spent bumps it (reconcile's compare-and-set); at: when spent last grew by a settle.
  redis.call('HINCRBY', c, 'ver', 1)
  redis.call('HSET', c, 'at', fmt(now))
  touch(c, ARGV[3 + i])
end
mark(r, 'settled', marker_ttl_ms)
return append_states({}, counters)
