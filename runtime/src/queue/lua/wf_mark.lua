-- Applies marks to a workflow record, each set-if-absent: applying the
-- same member's end twice changes nothing, and a group's count moves only
-- with a new mark (see `workflow.rs`).
-- KEYS[1]: the workflow's hash
-- ARGV: channel, workflow id, ttl ms once failed, n, then per mark:
--       kind (S success, F failure, C completed group or chain), field, value, counter field ('' none)
-- Returns false when the record is gone, else
-- {state, done, failed path ('' none), count per mark (0 without a counter)...}.
local chan, wid = ARGV[1], ARGV[2]
local ttl = ttl_ms(ARGV[3], 'ttl')
local n = count(ARGV[4], 'n')
if #ARGV ~= 4 + n * 4 then arg_error('count', #ARGV) end
for j = 0, n - 1 do
  local k = ARGV[5 + j * 4]
  if k ~= 'S' and k ~= 'F' and k ~= 'C' then arg_error('kind of mark ' .. j, k) end
end
local K = KEYS[1]
local st = redis.call('HGET', K, 'state')
if not st then return false end
local was = st
local counts, ended = {}, 0
for j = 0, n - 1 do
  local b = 5 + j * 4
  local kind, field, value, counter = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local new = redis.call('HSETNX', K, field, value)
  if kind ~= 'C' then ended = ended + new end
  local c = 0
  if counter ~= '' then
    if new == 1 then
      c = redis.call('HINCRBY', K, counter, 1)
    else
      c = tonumber(redis.call('HGET', K, counter) or '0')
    end
  end
  counts[#counts + 1] = c
  if kind == 'F' and new == 1 and st == 'running' then
    st = 'failed'
    local path = string.sub(field, 3)
    redis.call('HSET', K, 'state', st, 'failed', path, 'finished', server_ms())
    redis.call('PEXPIRE', K, ttl)
  end
end
local done
if ended > 0 then
  done = redis.call('HINCRBY', K, 'done', ended)
else
  done = tonumber(redis.call('HGET', K, 'done') or '0')
end
local failed = ''
if st == 'failed' then failed = redis.call('HGET', K, 'failed') or '' end
if ended > 0 or st ~= was then
  redis.call('PUBLISH', chan, cjson.encode({ q = '~wf', wf = { id = wid, state = st, done = done } }))
end
local out = { st, done, failed }
for _, c in ipairs(counts) do out[#out + 1] = c end
return out
