-- Stores a new workflow record unless one with this id exists.
-- KEYS[1]: the workflow's hash
-- ARGV: spec, total members, running ttl ms, when the tree was made (ms)
-- Returns 1 when stored, 0 when the workflow existed.
local ttl = ttl_ms(ARGV[3], 'running ttl')
count(ARGV[2], 'total')
if not string.match(ARGV[4], '^%-?%d+$') then arg_error('made', ARGV[4]) end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'state', 'running', 'done', 0, 'total', ARGV[2],
  'created', server_ms(), 'made', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
