-- Extends the leases a worker still holds to the server's now plus the
-- lease; returns those it lost, and which of the jobs were revoked (with
-- 1 if the revoke asked to terminate), so that a worker that missed the
-- pub/sub message still learns of it.
-- KEYS[1]: leases, KEYS[2]: revoked, KEYS[3]: terminate; ARGV: lease ms, members...
local until_ = server_ms() + ttl_ms(ARGV[1], 'lease')
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 2))
local ids = {}
for i = 2, #ARGV do ids[i - 1] = string.match(ARGV[i], '^[^|]+') or ARGV[i] end
local revoked = redis.call('ZMSCORE', KEYS[2], unpack(ids))
local terminate = redis.call('ZMSCORE', KEYS[3], unpack(ids))
local lost, keep, rev = {}, {}, {}
for i = 1, #ARGV - 1 do
  if scores[i] then
    keep[#keep + 1] = until_
    keep[#keep + 1] = ARGV[i + 1]
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
  if revoked[i] then
    rev[#rev + 1] = ids[i]
    rev[#rev + 1] = terminate[i] and '1' or '0'
  end
end
if #keep > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(keep)) end
return { lost, rev }
