-- seed: KEYS = {C, M}; ARGV = {spent, version, ttl, keep}. SET spent unless already seeded with this version.
-- Reply: 1 if applied. Never an increment: replicas seeding at once, or twice, agree on one total.
-- keep = '1': a counter that exists while M (its slot's seeded marker) already names this version is live in
-- this Redis lifetime (it has counted every settle since it was created): it is left as it is, so a later
-- rebuild (a config reload, a replica starting) never sets back spend that is not in the store yet.
local c = KEYS[1]
if redis.call('HGET', c, 'seed_version') == ARGV[2] then
  return 0
end
if ARGV[4] == '1' and redis.call('GET', KEYS[2]) == ARGV[2] and redis.call('EXISTS', c) == 1 then
  return 0
end
redis.call('HSET', c, 'spent', ARGV[1], 'seed_version', ARGV[2])
redis.call('HINCRBY', c, 'ver', 1)
touch(c, ARGV[3])
return 1
