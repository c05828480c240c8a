-- Puts entries of a queue's workflow outbox (ends that failed to apply,
-- members that run again) behind the others: each is scored as if it
-- ended `shift` ms from now (by the server's clock), so the due check
-- hands it out again only once that is stale. Entries already removed
-- are not added back (`XX`).
-- KEYS[1]: the queue's outbox
-- ARGV: shift ms, then the members' ids (at most a few thousand: one
--       `ZADD`)
local shift = int_in(ARGV[1], 0, MAX_MS, 'shift')
local at = server_ms() + shift
local o = {}
for i = 2, #ARGV do
  o[#o + 1] = at
  o[#o + 1] = ARGV[i]
end
if #o == 0 then return 0 end
return redis.call('ZADD', KEYS[1], 'XX', 'CH', unpack(o))
