-- Puts dead letters back in the ready list as fresh records.
-- KEYS: the queue's keys (`queue_keys` in redis.rs, the ready list first),
--       then `job:<id>` of each id.
-- ARGV: prefix, channel, queue, then pairs of id, record
-- The fresh record waits in `live`; the final one goes.
local P, chan, qname = ARGV[1], ARGV[2], ARGV[3]
local done, ready, prio = {}, {}, {}
local now = nil
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('ZREM', P .. 'dead', id) == 1 then
    redis.call('HSET', P .. 'live', id, ARGV[i + 1])
    redis.call('DEL', P .. 'job:' .. id)
    local p = rec_priority(ARGV[i + 1])
    if p > 0 then now = now or server_ms() end
    stage_ready(ready, prio, id .. '|0', p, now)
    done[#done + 1] = id
  end
end
if #done > 0 then
  -- Waiting again: no longer ended, nor expiring; a revoke of its last
  -- run (it failed for good even so) does not reach the new one.
  index_forget(P, done, false)
  redis.call('ZREM', P .. 'revoked', unpack(done))
  redis.call('ZREM', P .. 'terminate', unpack(done))
  now = now or server_ms()
  hist_begin(P, now)
  if #ready > 0 then redis.call('RPUSH', P .. 'ready', unpack(ready)) end
  if #prio > 0 then redis.call('ZADD', P .. 'prio', unpack(prio)) end
  hist_flush(P, now)
  local msg = { q = qname, ready = #done }
  if #prio > 0 then msg.prio = 1 end
  publish(chan, cjson.encode(msg))
end
return done
