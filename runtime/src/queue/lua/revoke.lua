-- Revokes a job: a queued one is ended at once, a running one is flagged
-- (so it is never retried) and its worker told to stop it when asked.
-- KEYS[1]: the job's record
-- ARGV: prefix, id, now ms, revoked record, ttl ms, terminate (1/0), channel, record read by the caller, queue
local P, id, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cur = redis.call('GET', KEYS[1])
if not cur then return 'NOTFOUND' end
local st = string.match(cur, '^{"state":"(%u+)"')
if st ~= 'PENDING' and st ~= 'RETRY' then return 'FINAL:' .. (st or '?') end
local cursor, running = '0', false
repeat
  local r = redis.call('ZSCAN', P .. 'leases', cursor, 'MATCH', id .. '|*', 'COUNT', 1000)
  cursor = r[1]
  if #r[2] > 0 then running = true end
until cursor == '0' or running
if running then
  redis.call('ZADD', P .. 'revoked', now, id)
  redis.call('ZREMRANGEBYSCORE', P .. 'revoked', '-inf', now - 86400000)
  redis.call('PUBLISH', 'runner:control', cjson.encode({ revoke = id, terminate = ARGV[6] == '1' }))
  if ARGV[6] == '1' then return 'TERMINATING' end
  return 'RUNNING'
end
if cur ~= ARGV[8] then return 'CHANGED' end
redis.call('SET', KEYS[1], ARGV[4], 'PX', tonumber(ARGV[5]))
-- A delayed job leaves the delayed set now (a ready one is skipped when popped).
redis.call('ZREM', P .. 'delayed', id .. '|0')
redis.call('PUBLISH', ARGV[7], cjson.encode({ q = ARGV[9], ev = { { id, 'REVOKED' } } }))
return 'REVOKED'
