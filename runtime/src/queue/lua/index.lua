-- Records which queue holds each job, for lookups by id (status, revoke):
-- the queue's keys cannot be named without the queue, and one script may
-- not touch two queues' slots, so the index has its own (`{ids}`).
-- KEYS[1]: a bucket, runner:{ids}:<hour of the ids' timestamps>
-- ARGV: ttl ms (the bucket lives at least that long from now), then pairs
--       of id, queue.
-- The bucket's TTL only grows: it outlives every record it points to.
local ttl = ttl_ms(ARGV[1], 'ttl')
if #ARGV < 3 or #ARGV % 2 ~= 1 then arg_error('count', #ARGV) end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
-- Extended a minute beyond the need, so that a stream of jobs extends it
-- about once a minute, not once per call.
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl + 60000) end
return 1
