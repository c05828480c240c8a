-- Puts entries of a queue's workflow outbox (ends that failed to apply)
-- behind the others: each is scored as if it ended `shift` ms from now (by
-- the server's clock), so the due check hands it out again only once that
-- is stale. Entries already removed are not added back (`XX`).
-- KEYS[1]: the queue's outbox
-- ARGV: shift ms, then the members' ids
local shift = int_in(ARGV[1], 0, MAX_MS, 'shift')
local at = server_ms() + shift
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', at, ARGV[i])
end
return n
