-- charge (proxy/ratelimit.py): KEYS = {T}; ARGV = {tpm, tokens}. Reply: the new level, rounded down.
-- Refills the bucket to now (Redis's TIME), then takes `tokens`; the level may go below zero (debt), so the
-- key's next calls wait. The hash expires when the bucket would be full again (a missing bucket is full).
local MINUTE = 60000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tpm
if b[1] then
  level = math.min(tpm, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * tpm / MINUTE)
end
level = level - tokens
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level), 'at', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tpm - level) * MINUTE / tpm / 1000)))
return math.floor(level)
