-- Applies marks to a workflow record, each set-if-absent: applying the
-- same member's end twice changes nothing, and a group's count moves only
-- with a new mark (see `workflow.rs`).
-- KEYS[1]: the workflow's hash
-- ARGV: channel, workflow id, ttl ms once failed, n, then per mark:
--       kind (S success, F failure, C completed group or chain), field, value, counter field ('' none),
--       then when the marks' tree was made (ms)
-- Returns false when the record is gone or is of a tree made at another
-- time (another workflow with this id), else
-- {state, done, failed path ('' none), then per mark: its counter's value
-- after the call (0 without a counter), and 1 when this call wrote a new
-- mark of that counter (or, without a counter, this mark itself) else 0}.
-- The one call that brings a group's counter to its size has that 1.
local chan, wid = ARGV[1], ARGV[2]
local ttl = ttl_ms(ARGV[3], 'ttl')
local n = count(ARGV[4], 'n')
if #ARGV ~= 5 + n * 4 then arg_error('count', #ARGV) end
local made = ARGV[5 + n * 4]
for j = 0, n - 1 do
  local k = ARGV[5 + j * 4]
  if k ~= 'S' and k ~= 'F' and k ~= 'C' then arg_error('kind of mark ' .. j, k) end
end
local K = KEYS[1]
local rec = redis.call('HMGET', K, 'state', 'made')
local st = rec[1]
if not st then return false end
if rec[2] and rec[2] ~= made then return false end
local was = st
local ended = 0
-- Counted marks of one kind and counter are written with one HSET: it
-- says how many fields are new, and a repeated mark rewrites the same
-- outcome (while the workflow runs, a member's mark there is its own
-- success: a failure would have ended the workflow).
local groups, order = {}, {}
-- Per uncounted mark (by its index): whether it was new.
local fresh = {}
for j = 0, n - 1 do
  local b = 5 + j * 4
  local kind, field, value, counter = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  if counter ~= '' and kind ~= 'F' then
    local g = kind .. '|' .. counter
    if not groups[g] then
      groups[g] = { kind = kind, counter = counter, fv = {} }
      order[#order + 1] = g
    end
    local fv = groups[g].fv
    fv[#fv + 1] = field
    fv[#fv + 1] = value
  else
    local new = redis.call('HSETNX', K, field, value)
    fresh[j] = new
    if kind ~= 'C' then ended = ended + new end
    if kind == 'F' and new == 1 and st == 'running' then
      st = 'failed'
      redis.call('HSET', K, 'state', st, 'failed', string.sub(field, 3), 'finished', server_ms())
      redis.call('PEXPIRE', K, ttl)
    end
  end
end
local counts, moved = {}, {}
for _, g in ipairs(order) do
  local grp = groups[g]
  local new = 0
  if st == 'running' then
    new = redis.call('HSET', K, unpack(grp.fv))
  else
    -- Ended: a member's mark may be there with another outcome (it failed
    -- the workflow, then its dead letter was replayed), and it stays.
    for i = 1, #grp.fv, 2 do
      new = new + redis.call('HSETNX', K, grp.fv[i], grp.fv[i + 1])
    end
  end
  if grp.kind == 'S' then ended = ended + new end
  if new > 0 then
    moved[grp.counter] = 1
    counts[grp.counter] = redis.call('HINCRBY', K, grp.counter, new)
  elseif not counts[grp.counter] then
    counts[grp.counter] = tonumber(redis.call('HGET', K, grp.counter) or '0')
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
for j = 0, n - 1 do
  local kind, counter = ARGV[5 + j * 4], ARGV[8 + j * 4]
  out[#out + 1] = (counter ~= '' and counts[counter]) or 0
  if counter ~= '' and kind ~= 'F' then
    out[#out + 1] = moved[counter] or 0
  else
    out[#out + 1] = fresh[j] or 0
  end
end
return out
