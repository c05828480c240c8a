-- Ends a running workflow (succeeded or revoked); one that ended already
-- keeps its end.
-- KEYS[1]: the workflow's hash
-- ARGV: channel, workflow id, new state, ttl ms
-- Returns the state after (false when the record is gone).
local chan, wid, to = ARGV[1], ARGV[2], ARGV[3]
local ttl = ttl_ms(ARGV[4], 'ttl')
if to ~= 'succeeded' and to ~= 'revoked' then arg_error('state', to) end
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return false end
if st ~= 'running' then return st end
redis.call('HSET', KEYS[1], 'state', to, 'finished', server_ms())
redis.call('PEXPIRE', KEYS[1], ttl)
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
redis.call('PUBLISH', chan, cjson.encode({ q = '~wf', wf = { id = wid, state = to, done = done } }))
return to
