-- release: KEYS = {R}; ARGV = {rid, marker_ttl_ms}. Reply: 1 if a live reservation was released, else 0.
local r, rid, marker_ttl_ms = KEYS[1], ARGV[1], ARGV[2]
local st = redis.call('HMGET', r, 'state', 'keys')
if st[1] ~= 'live' then
  return 0
end
local now = now_ms()
for _, c in ipairs(cjson.decode(st[2])) do
  purge(c, now)
  drop_hold(c, rid)
end
mark(r, 'released', marker_ttl_ms)
return 1
