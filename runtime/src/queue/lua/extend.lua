-- Extends the leases a worker still holds to the server's now plus the
-- lease; returns those it lost.
-- KEYS[1]: leases; ARGV: lease ms, members...
local until_ = server_ms() + ttl_ms(ARGV[1], 'lease')
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 2))
local lost, keep = {}, {}
for i = 1, #ARGV - 1 do
  if scores[i] then
    keep[#keep + 1] = until_
    keep[#keep + 1] = ARGV[i + 1]
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
if #keep > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(keep)) end
return lost
