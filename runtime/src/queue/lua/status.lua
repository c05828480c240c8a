-- A job's record plus its live lease and progress.
-- KEYS: the queue's keys (`queue_keys` in redis.rs), then the job's final
--       record key (`job:<id>`), last; ARGV: prefix, id
local P, id = ARGV[1], ARGV[2]
local rec = redis.call('GET', KEYS[#KEYS]) or redis.call('HGET', P .. 'live', id)
if not rec then return false end
local st = string.match(rec, '^{"state":"(%u+)"')
if st ~= 'PENDING' and st ~= 'RETRY' then return { rec, '', '' } end
-- The lease index names the member; the lease set says if it is live.
local lease = redis.call('HGET', P .. 'leased', id)
if lease and not redis.call('ZSCORE', P .. 'leases', lease) then lease = nil end
local prog = redis.call('HGET', P .. 'progress', id)
return { rec, lease or '', prog or '' }
