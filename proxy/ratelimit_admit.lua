-- admit (proxy/ratelimit.py): KEYS = {R, T}; ARGV = {rpm, tpm} (0: no such limit).
-- R holds the GCRA theoretical arrival time (microseconds); T is the token bucket hash {level, at}.
-- Reply: {exceeded (0 admitted, 1 requests, 2 tokens), wait_us, remaining_requests, reset_requests_us,
--         remaining_tokens, reset_tokens_us}.
-- Time is Redis's own (TIME), so replicas with skewed clocks agree. Only an admitted request writes (R); a
-- refused one changes nothing. Both keys expire once back to idle, so unused keys vanish.
local MINUTE = 60000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local exceeded, wait = 0, 0

local remaining_tokens, reset_tokens = 0, 0
if tpm > 0 then
  local b = redis.call('HMGET', KEYS[2], 'level', 'at')
  local level = tpm
  if b[1] then
    level = math.min(tpm, tonumber(b[1]) + math.max(0, now - tonumber(b[2])) * tpm / MINUTE)
  end
  if level <= 0 then
    -- In debt: wait until the level is above zero again.
    exceeded, wait = 2, math.floor(-level * MINUTE / tpm) + 1
  else
    remaining_tokens = math.floor(level + 0.000001)
  end
  reset_tokens = math.ceil((tpm - level) * MINUTE / tpm)
end

local remaining_requests, reset_requests = 0, 0
if rpm > 0 then
  -- GCRA in whole microseconds (exact in doubles below 2^53): interval rounded up, burst of rpm requests.
  local interval = math.ceil(MINUTE / rpm)
  local window = rpm * interval
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval
  local late = new_tat - window - now
  if exceeded == 0 and late > 0 then
    exceeded, wait = 1, late
  end
  if exceeded == 0 then
    local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
    tat = new_tat
  end
  remaining_requests = math.floor((now + window - tat) / interval)
  reset_requests = tat - now
end
return {exceeded, wait, remaining_requests, reset_requests, remaining_tokens, reset_tokens}
