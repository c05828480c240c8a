-- Purges queued jobs: each one named leaves the ready list or the delayed
-- set and ends REVOKED, if it is still there and its record is the one the
-- caller read (a job that started, or changed, meanwhile is left alone).
-- KEYS: the queue's keys (`queue_keys` in redis.rs, the ready list first),
--       then `job:<id>` of each entry.
-- ARGV: prefix, channel, queue, n, then per entry: id, member,
--       where ('r' ready, 'd' delayed, 'p' prioritized ready), record read by the caller,
--       revoked record, ttl ms.
--       A stale entry (record gone or final when read) has '' as record
--       and revoked record: it is dropped if its record still is.
-- Returns the ids purged.
local P, chan, qname = ARGV[1], ARGV[2], ARGV[3]
local n = count(ARGV[4], 'n')
if #ARGV ~= 4 + n * 6 then arg_error('count', #ARGV) end
for j = 0, n - 1 do
  local b = 5 + j * 6
  local w = ARGV[b + 2]
  if w ~= 'r' and w ~= 'd' and w ~= 'p' then arg_error('where of entry ' .. j, w) end
  if ARGV[b + 3] ~= '' then ttl_ms(ARGV[b + 5], 'ttl of entry ' .. j) end
end
local out, ev = {}, {}
local now = nil
for j = 0, n - 1 do
  local b = 5 + j * 6
  local id, member, w, seen = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local k = P .. 'job:' .. id
  -- A queued job's record is in `live` (a final one, in `job:<id>` or
  -- kept in `live`, is not queued: it is dropped as stale).
  local cur = redis.call('HGET', P .. 'live', id)
  local ok
  if seen == '' then
    local st = cur and string.match(cur, '^{"state":"(%u+)"')
    ok = not cur or (st ~= 'PENDING' and st ~= 'RETRY')
  else
    ok = cur == seen
  end
  if ok then
    local removed
    now = now or server_ms()
    hist_begin(P, now)
    if w == 'r' then
      removed = redis.call('LREM', P .. 'ready', 1, member)
    elseif w == 'p' then
      removed = redis.call('ZREM', P .. 'prio', member)
    else
      removed = redis.call('ZREM', P .. 'delayed', member)
    end
    if removed > 0 and seen ~= '' then
      redis.call('SET', k, ARGV[b + 4], 'PX', tonumber(ARGV[b + 5]))
      redis.call('HDEL', P .. 'live', id)
      now = now or server_ms()
      index_end(id, 'REVOKED', now + tonumber(ARGV[b + 5]), ARGV[b + 4])
      out[#out + 1] = id
      ev[#ev + 1] = { id, 'REVOKED' }
    end
  end
end
index_flush(P, now)
hist_flush(P, now)
if #ev > 0 then publish(chan, cjson.encode({ q = qname, ev = ev })) end
return out
