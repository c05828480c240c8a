-- Stores a batch of jobs and makes them ready or delayed, in one call.
-- KEYS[1]: the queue's ready list (routes the call to the queue's slot)
-- ARGV: prefix, channel, queue, idempotency ttl ms, n,
--       then per job: id, record, delay ms (0 = ready now), idempotency key ('=': stored
--       once by its id, a workflow's step), record ttl ms (0 = none), priority (0-9)
-- Due times are the server's now plus the delay (the producer's clock may be off).
-- Returns per job: 'new' or 'dup', then the earlier record for a dup ('' otherwise).
local P, chan, qname = ARGV[1], ARGV[2], ARGV[3]
local idem_ttl = ttl_ms(ARGV[4], 'idempotency ttl')
local n = count(ARGV[5], 'n')
local W = 6 -- arguments per job
if #ARGV ~= 5 + n * W then arg_error('count', #ARGV) end
for j = 0, n - 1 do
  local b = 6 + j * W
  int_in(ARGV[b + 2], 0, MAX_MS, 'delay of job ' .. j)
  if ARGV[b + 4] ~= '0' then ttl_ms(ARGV[b + 4], 'record ttl of job ' .. j) end
  int_in(ARGV[b + 5], 0, 9, 'priority of job ' .. j)
end
local out = {}
if n == 0 then return out end

local mset, ready, delayed, indexed, prio = {}, {}, {}, {}, {}
local now = nil
local seen = {}
local wake = nil
for j = 0, n - 1 do
  local b = 6 + j * W
  local id, rec, delay, idem, ttl = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], tonumber(ARGV[b + 4])
  local p = tonumber(ARGV[b + 5])
  local dup = nil
  local stored = false
  if idem == '=' then
    -- A workflow's step: its id is derived from the workflow and the
    -- step, and a second enqueue of it finds the first record.
    local k = P .. 'job:' .. id
    local ok
    if ttl > 0 then
      ok = redis.call('SET', k, rec, 'NX', 'PX', ttl)
    else
      ok = redis.call('SET', k, rec, 'NX')
    end
    if ok then stored = true else dup = redis.call('GET', k) or rec end
  elseif idem ~= '' then
    dup = seen[idem]
    if not dup then
      local ik = P .. 'idem:' .. idem
      local prev = redis.call('GET', ik)
      if prev then
        dup = redis.call('GET', P .. 'job:' .. prev)
        -- The same job again (an id the runner derives, as for a beat's
        -- fire) whose record has expired: it was stored once, that is all.
        if not dup and prev == id then dup = rec end
      end
      if not dup then
        redis.call('SET', ik, id, 'PX', idem_ttl)
        seen[idem] = rec
      end
    end
  end
  if dup then
    out[#out + 1] = 'dup'
    out[#out + 1] = dup
  else
    out[#out + 1] = 'new'
    out[#out + 1] = ''
    indexed[#indexed + 1] = 0
    indexed[#indexed + 1] = id
    if ttl > 0 then
      if not stored then redis.call('SET', P .. 'job:' .. id, rec, 'PX', ttl) end
      now = now or server_ms()
      index_end(id, nil, now + ttl)
    elseif not stored then
      mset[#mset + 1] = P .. 'job:' .. id
      mset[#mset + 1] = rec
    end
    if delay > 0 then
      now = now or server_ms()
      local due = now + delay
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = delayed_member(id, 0, p)
      if not wake or due < wake then wake = due end
    else
      if p > 0 then now = now or server_ms() end
      stage_ready(ready, prio, id .. '|0', p, now)
    end
  end
end
if #mset > 0 then redis.call('MSET', unpack(mset)) end
if #indexed > 0 then
  redis.call('ZADD', P .. 'jobs', unpack(indexed))
  hist_count('PENDING', #indexed / 2)
end
index_flush(P)
if #ready > 0 then redis.call('RPUSH', P .. 'ready', unpack(ready)) end
if #delayed > 0 then redis.call('ZADD', P .. 'delayed', unpack(delayed)) end
if #prio > 0 then redis.call('ZADD', P .. 'prio', unpack(prio)) end
hist_flush(P, now, true)
local readied = #ready + #prio / 2
if readied > 0 or wake then
  local msg = { q = qname }
  if readied > 0 then msg.ready = readied end
  if #prio > 0 then msg.prio = 1 end
  if wake then msg.wake = wake end
  redis.call('PUBLISH', chan, cjson.encode(msg))
end
return out
