-- Argument checks, prepended to every script: a script checks all of its
-- arguments before its first write, so that a bad one is refused whole and
-- never leaves a job half-moved (out of one list, in no other).
local MAX_MS = 3155760000000 -- 100 years: the longest delay or TTL of a job
local MAX_TIME_MS = 100000000000000 -- a time in ms since 1970, beyond year 5000
local function arg_error(what, v)
  error({ err = 'ERR bad argument ' .. what .. ': ' .. tostring(v) })
end
local function int_in(v, lo, hi, what)
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or n < lo or n > hi then arg_error(what, v) end
  return n
end
-- A TTL or a duration in ms: 1 to MAX_MS.
local function ttl_ms(v, what) return int_in(v, 1, MAX_MS, what) end
-- A time in ms since 1970 (0: none).
local function time_ms(v, what) return int_in(v, 0, MAX_TIME_MS, what) end
-- A count.
local function count(v, what) return int_in(v, 0, 1000000000, what) end
-- The server's clock in ms: the one clock of every lease, due time and
-- rate limit window (workers' clocks may be off).
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
