-- Shared prelude, prepended to every operation's script by redis.py (Lua scripts cannot include files).
-- Layout: counter hash C {spent, reserved, seed_version, ver (bumped by every write of spent), at (ms of the
-- last settle), h:<rid> = amount held}; its ZSET Z = C .. '~holds'
-- (reservation id -> expiry ms, server clock); reservation hash R {state, amount, expires, keys (JSON of C)}.
-- Amounts travel as decimal strings and are added with HINCRBY (exact int64 on the server); Lua numbers
-- (doubles) are only used to compare, exact below 2^53 nano-USD (about 9 million USD).

local HOLDS = '~holds'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(n)
  return string.format('%d', n)
end

-- Take the amount of reservation rid off counter c, if c still holds it.
local function drop_hold(c, rid)
  local amount = redis.call('HGET', c, 'h:' .. rid)
  if amount then
    if amount ~= '0' then
      redis.call('HINCRBY', c, 'reserved', '-' .. amount)
    end
    redis.call('HDEL', c, 'h:' .. rid)
  end
  redis.call('ZREM', c .. HOLDS, rid)
end

-- Give back the amounts of c's reservations whose expiry is before now (expiry == now is still live).
local function purge(c, now)
  local z = c .. HOLDS
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. fmt(now))
  for _, rid in ipairs(expired) do
    drop_hold(c, rid)
  end
end

local function touch(c, ttl_s)
  redis.call('EXPIRE', c, ttl_s)
  redis.call('EXPIRE', c .. HOLDS, ttl_s)
end

-- A reservation is live while its state is 'live' and its expiry is not before now.
local function is_live(r, now)
  local st = redis.call('HMGET', r, 'state', 'expires')
  return st[1] == 'live' and tonumber(st[2]) >= now
end

local function mark(r, state, ttl_ms)
  redis.call('DEL', r)
  redis.call('HSET', r, 'state', state)
  redis.call('PEXPIRE', r, ttl_ms)
end

-- Flat reply: spent and reserved of each counter (false where never written).
local function append_states(out, counters)
  for _, c in ipairs(counters) do
    local s = redis.call('HMGET', c, 'spent', 'reserved')
    table.insert(out, s[1])
    table.insert(out, s[2])
  end
  return out
end
