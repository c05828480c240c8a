-- Puts dead letters back in the ready list as fresh records.
-- KEYS[1]: ready list; ARGV: prefix, channel, queue, then pairs of id, record
local P, chan, qname = ARGV[1], ARGV[2], ARGV[3]
local done, ready = {}, {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('ZREM', P .. 'dead', id) == 1 then
    redis.call('SET', P .. 'job:' .. id, ARGV[i + 1])
    ready[#ready + 1] = id .. '|0'
    done[#done + 1] = id
  end
end
if #ready > 0 then
  -- Waiting again: no longer ended, nor expiring.
  index_forget(P, done, false)
  redis.call('RPUSH', P .. 'ready', unpack(ready))
  redis.call('PUBLISH', chan, cjson.encode({ q = qname, ready = #ready }))
end
return done
