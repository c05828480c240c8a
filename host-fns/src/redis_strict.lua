-- Strict keys (`STRICT_KEYS_LUA`: `RedisBroker::with_strict_keys`,
-- `RedisKv::with_strict_keys`): put before a script, it refuses a command
-- on a key the script did not declare in KEYS, as strict servers do
-- (Dragonfly, Kvrocks with lua-strict-key-accessing; Redis does not check
-- it). The tests run this way; a server runs the plain scripts.
-- `redis` is shadowed by a local table for the rest of the chunk.
local real_call, real_pcall = redis.call, redis.pcall
local strict_declared = {}
for _, k in ipairs(KEYS) do strict_declared[k] = true end
-- Where a command's keys are: 'first' (its first argument), 'all' (every
-- argument), 'pairs' (every other one, from the first), 'none'. A command
-- not listed is refused: add it here with its keys.
local STRICT_KEYS = {
  GET = 'first', SET = 'first', SETNX = 'first', INCR = 'first', INCRBY = 'first',
  DECRBY = 'first', PEXPIRE = 'first', PTTL = 'first',
  HGET = 'first', HSET = 'first', HSETNX = 'first', HDEL = 'first', HMGET = 'first',
  HGETALL = 'first', HKEYS = 'first', HINCRBY = 'first', HEXISTS = 'first', HLEN = 'first',
  LPUSH = 'first', RPUSH = 'first', LPOP = 'first', LLEN = 'first', LREM = 'first', LRANGE = 'first',
  ZADD = 'first', ZREM = 'first', ZSCORE = 'first', ZMSCORE = 'first', ZCARD = 'first',
  ZRANGE = 'first', ZRANGEBYSCORE = 'first', ZREMRANGEBYSCORE = 'first', ZPOPMIN = 'first',
  SADD = 'first', SREM = 'first', SMEMBERS = 'first',
  MGET = 'all', DEL = 'all', EXISTS = 'all', UNLINK = 'all',
  MSET = 'pairs',
  TIME = 'none', PUBLISH = 'none', SPUBLISH = 'none',
}
local function strict_check(args)
  local cmd = string.upper(tostring(args[1]))
  local where = STRICT_KEYS[cmd]
  if not where then error({ err = 'ERR strict keys: command ' .. cmd .. ' is not known to the check' }) end
  local function check(k)
    if not strict_declared[k] then
      error({ err = 'ERR strict keys: ' .. cmd .. ' on undeclared key ' .. tostring(k) })
    end
  end
  if where == 'first' then
    check(args[2])
  elseif where == 'all' then
    for i = 2, #args do check(args[i]) end
  elseif where == 'pairs' then
    for i = 2, #args, 2 do check(args[i]) end
  end
end
local redis = {
  call = function(...)
    strict_check({ ... })
    return real_call(...)
  end,
  pcall = function(...)
    strict_check({ ... })
    return real_pcall(...)
  end,
  error_reply = redis.error_reply,
  status_reply = redis.status_reply,
}
