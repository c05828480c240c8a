-- A job's record plus its live lease and progress.
-- KEYS[1]: the job's record; ARGV: prefix, id
local rec = redis.call('GET', KEYS[1])
if not rec then return false end
local st = string.match(rec, '^{"state":"(%u+)"')
if st ~= 'PENDING' and st ~= 'RETRY' then return { rec, '', '' } end
local P, id = ARGV[1], ARGV[2]
local cursor, lease = '0', nil
repeat
  local r = redis.call('ZSCAN', P .. 'leases', cursor, 'MATCH', id .. '|*', 'COUNT', 1000)
  cursor = r[1]
  if #r[2] > 0 then lease = r[2][1] end
until cursor == '0' or lease
local prog = redis.call('HGET', P .. 'progress', id)
return { rec, lease or '', prog or '' }
