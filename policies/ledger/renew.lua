-- renew: KEYS = {R}; ARGV = {rid, ttl_ms}. Reply: 1 if the live reservation now expires at now + ttl_ms.
local r, rid, ttl_ms = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now = now_ms()
if not is_live(r, now) then
  return 0
end
local expires = now + ttl_ms
for _, c in ipairs(cjson.decode(redis.call('HGET', r, 'keys'))) do
  if redis.call('HEXISTS', c, 'h:' .. rid) == 1 then
    redis.call('ZADD', c .. HOLDS, 'XX', fmt(expires), rid)
  end
end
redis.call('HSET', r, 'expires', fmt(expires))
redis.call('PEXPIREAT', r, fmt(expires + 60000))
return 1
