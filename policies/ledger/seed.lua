-- seed: KEYS = {C}; ARGV = {spent, version, ttl}. SET spent unless already seeded with this version.
-- Reply: 1 if applied. Never an increment: replicas seeding at once, or twice, agree on one total.
local c = KEYS[1]
if redis.call('HGET', c, 'seed_version') == ARGV[2] then
  return 0
end
redis.call('HSET', c, 'spent', ARGV[1], 'seed_version', ARGV[2])
redis.call('HINCRBY', c, 'ver', 1)
touch(c, ARGV[3])
return 1
