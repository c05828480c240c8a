-- A job's record plus its live lease and progress.
-- KEYS[1]: the job's record; ARGV: prefix, id
local rec = redis.call('GET', KEYS[1])
if not rec then return false end
local st = string.match(rec, '^{"state":"(%u+)"')
if st ~= 'PENDING' and st ~= 'RETRY' then return { rec, '', '' } end
local P, id = ARGV[1], ARGV[2]
-- The lease index names the member; the lease set says if it is live.
local lease = redis.call('HGET', P .. 'leased', id)
if lease and not redis.call('ZSCORE', P .. 'leases', lease) then lease = nil end
local prog = redis.call('HGET', P .. 'progress', id)
return { rec, lease or '', prog or '' }
