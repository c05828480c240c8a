-- Records the jobs launched for workflow steps (`l:<path>` = job id) and
-- reads the state, so that a launch that raced a revoke sees it.
-- KEYS[1]: the workflow's hash
-- ARGV: field, job id, field, job id, ...
-- Returns the state (false when the record is gone: nothing is written).
if #ARGV % 2 ~= 0 then arg_error('count', #ARGV) end
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return false end
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return st
