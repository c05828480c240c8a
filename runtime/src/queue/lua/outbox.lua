-- Entries of a queue's workflow outbox at least a given age old (by the
-- server's clock), oldest first.
-- KEYS[1]: the queue's outbox
-- ARGV: minimum age ms, limit
local age = int_in(ARGV[1], 0, MAX_MS, 'age')
local limit = count(ARGV[2], 'limit')
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', server_ms() - age, 'LIMIT', 0, limit)
