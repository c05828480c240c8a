-- Revokes a job: a queued one is ended at once, a running one is flagged
-- (so it is never retried) and its worker told to stop it when asked.
-- KEYS[1]: the job's record
-- ARGV: prefix, id, revoked record, ttl ms, terminate (1/0), channel, record read by the caller, queue
local P, id = ARGV[1], ARGV[2]
local ttl = ttl_ms(ARGV[4], 'ttl')
local cur = redis.call('GET', KEYS[1])
if not cur then return 'NOTFOUND' end
local st = string.match(cur, '^{"state":"(%u+)"')
if st ~= 'PENDING' and st ~= 'RETRY' then return 'FINAL:' .. (st or '?') end
local member = redis.call('HGET', P .. 'leased', id)
local running = member and redis.call('ZSCORE', P .. 'leases', member) and true or false
if running then
  local now = server_ms()
  redis.call('ZADD', P .. 'revoked', now, id)
  redis.call('ZREMRANGEBYSCORE', P .. 'revoked', '-inf', now - 86400000)
  if ARGV[5] == '1' then
    -- Kept for the worker's next lease extension, should it miss the message.
    redis.call('ZADD', P .. 'terminate', now, id)
    redis.call('ZREMRANGEBYSCORE', P .. 'terminate', '-inf', now - 86400000)
  end
  redis.call('PUBLISH', 'runner:control', cjson.encode({ revoke = id, terminate = ARGV[5] == '1' }))
  if ARGV[5] == '1' then return 'TERMINATING' end
  return 'RUNNING'
end
if cur ~= ARGV[7] then return 'CHANGED' end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
index_end(id, 'REVOKED', server_ms() + ttl, ARGV[3])
index_flush(P)
-- A delayed job leaves the delayed set now (a ready one is skipped when popped).
hist_begin(P, nil)
redis.call('ZREM', P .. 'delayed', delayed_member(id, 0, rec_priority(cur)))
hist_flush(P, nil)
publish(ARGV[6], cjson.encode({ q = ARGV[8], ev = { { id, 'REVOKED' } } }))
return 'REVOKED'
