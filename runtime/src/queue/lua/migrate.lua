-- Moves the records of waiting and running jobs stored by an earlier
-- build (as `job:<id>`, layout 1) into `live`, where this build's scripts
-- read them (`RedisBroker::migrate_layout`). A record already in `live`,
-- or a final one, stays where it is: running it twice changes nothing.
-- KEYS: the queue's `live`, then `job:<id>` of each id.
-- ARGV: ids (as many as KEYS after the first)
-- Returns how many records moved.
if #ARGV ~= #KEYS - 1 then arg_error('count', #ARGV) end
local moved = 0
for i, id in ipairs(ARGV) do
  local k = KEYS[i + 1]
  local rec = redis.call('GET', k)
  local st = rec and string.match(rec, '^{"state":"(%u+)"')
  if (st == 'PENDING' or st == 'RETRY') and redis.call('HEXISTS', KEYS[1], id) == 0 then
    redis.call('HSET', KEYS[1], id, rec)
    redis.call('DEL', k)
    moved = moved + 1
  end
end
return moved
