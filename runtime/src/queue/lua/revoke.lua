-- Revokes a job: a queued one is ended at once, a running one is flagged
-- (so it is never retried) and its worker told to stop it when asked.
-- KEYS: the queue's keys (`queue_keys` in redis.rs), then the job's final
--       record key (`job:<id>`), last.
-- ARGV: prefix, id, revoked record, ttl ms, terminate (1/0), channel, record read by the caller, queue
local P, id = ARGV[1], ARGV[2]
local final_key = KEYS[#KEYS]
local ttl = ttl_ms(ARGV[4], 'ttl')
-- Waiting or running: in `live`; ended: in `job:<id>` (or kept in `live`).
local cur = redis.call('HGET', P .. 'live', id) or redis.call('GET', final_key)
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
redis.call('SET', final_key, ARGV[3], 'PX', ttl)
redis.call('HDEL', P .. 'live', id)
index_end(id, 'REVOKED', server_ms() + ttl, ARGV[3])
index_flush(P)
-- A delayed job leaves the delayed set now (a ready one is skipped when popped).
hist_begin(P, nil)
redis.call('ZREM', P .. 'delayed', delayed_member(id, 0, rec_priority(cur)))
hist_flush(P, nil)
publish(ARGV[6], cjson.encode({ q = ARGV[8], ev = { { id, 'REVOKED' } } }))
return 'REVOKED'
