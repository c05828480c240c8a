-- Extends the leases a worker still holds; returns those it lost.
-- KEYS[1]: leases; ARGV: new deadline ms, members...
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ARGV, 2))
local lost, keep = {}, {}
for i = 1, #ARGV - 1 do
  if scores[i] then
    keep[#keep + 1] = ARGV[1]
    keep[#keep + 1] = ARGV[i + 1]
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
if #keep > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack(keep)) end
return lost
