-- Stores a batch of jobs and makes them ready or delayed, in one call.
-- KEYS: the queue's keys (`queue_keys` in redis.rs, the ready list first),
--       then per job with an idempotency key its `idem:<key>` and its
--       `job:<id>`, per workflow step its `job:<id>`, and per job with a
--       known earlier id its `job:<earlier id>`.
-- ARGV: prefix, channel, queue, idempotency ttl ms, n,
--       then per job: id, record, delay ms (0 = ready now), idempotency key ('=': stored
--       once by its id, a workflow's step), record ttl ms (0 = none), priority (0-9),
--       earlier id (whose record key is declared: '' none);
--       last, the history minute the caller knows ('': none; `hist_known`)
-- Due times are the server's now plus the delay (the producer's clock may be off).
-- Returns per job: 'new' or 'dup', then the earlier record for a dup ('' otherwise);
-- or 'again', then the id its idempotency key names, whose final record
-- the call could not read (nothing of that job was written: the caller
-- sends it again, declaring that record's key); then the history minute
-- the call saw ('' when it changed nothing).
-- A record lives in `live` until its job ends (`redis.rs`, "Keys").
-- A worker idle on the queue (`idle`, registered by its settle call) gets
-- the first jobs made ready leased to it at once, published with the
-- wake-up (`push`): it needs no lease call.
local P, chan, qname = ARGV[1], ARGV[2], ARGV[3]
-- How long a push's marker waits for its worker's next call.
local PUSH_MARK_MS = 10000
local idem_ttl = ttl_ms(ARGV[4], 'idempotency ttl')
local n = count(ARGV[5], 'n')
local W = 7 -- arguments per job
if #ARGV ~= 6 + n * W then arg_error('count', #ARGV) end
hist_known(ARGV[6 + n * W])
for j = 0, n - 1 do
  local b = 6 + j * W
  int_in(ARGV[b + 2], 0, MAX_MS, 'delay of job ' .. j)
  if ARGV[b + 4] ~= '0' then ttl_ms(ARGV[b + 4], 'record ttl of job ' .. j) end
  int_in(ARGV[b + 5], 0, 9, 'priority of job ' .. j)
end
local out = {}
if n == 0 then return { '' } end

local hset, ready, delayed, indexed, prio = {}, {}, {}, {}, {}
local now = nil
local seen, seen_steps = {}, {}
local wake = nil
-- Records of ready jobs that may be pushed to an idle worker, by member.
local pushable = {}
-- `r`, job `i`'s record read from `live`, unless its time in `ends` is
-- past (as good as gone).
local function unless_ended(i, r)
  if r then
    local e = redis.call('ZSCORE', P .. 'ends', i)
    if e then
      now = now or server_ms()
      if tonumber(e) <= now then r = nil end
    end
  end
  return r
end
-- Job `i`'s record while it waits or runs (`live`).
local function live_record(i)
  return unless_ended(i, redis.call('HGET', P .. 'live', i))
end
-- Job `i`'s record, waiting, running or final (`job:<i>`).
local function record_of(i)
  return live_record(i) or redis.call('GET', P .. 'job:' .. i)
end
-- Workflow steps' earlier records, looked up for all steps at once: one
-- HMGET of `live`, then one MGET of the final keys of those not there
-- (a launch of 5 steps costs 2 reads, not 10).
local step_earlier = {}
do
  local ids = {}
  for j = 0, n - 1 do
    local b = 6 + j * W
    if ARGV[b + 3] == '=' then ids[#ids + 1] = ARGV[b] end
  end
  if #ids > 0 then
    local lives = redis.call('HMGET', P .. 'live', unpack(ids))
    local finals = {}
    for i, id in ipairs(ids) do
      local r = unless_ended(id, lives[i])
      if r then step_earlier[id] = r else finals[#finals + 1] = id end
    end
    if #finals > 0 then
      local keys = {}
      for i, id in ipairs(finals) do keys[i] = P .. 'job:' .. id end
      local got = redis.call('MGET', unpack(keys))
      for i, id in ipairs(finals) do
        if got[i] then step_earlier[id] = got[i] end
      end
    end
  end
end
for j = 0, n - 1 do
  local b = 6 + j * W
  local id, rec, delay, idem, ttl = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], tonumber(ARGV[b + 4])
  local p = tonumber(ARGV[b + 5])
  local earlier = ARGV[b + 6]
  local dup = nil
  local again = nil
  if idem == '=' then
    -- A workflow's step: its id is derived from the workflow and the
    -- step, and a second enqueue of it finds the first record.
    dup = seen_steps[id] or step_earlier[id]
    if not dup then seen_steps[id] = rec end
  elseif idem ~= '' then
    dup = seen[idem]
    if not dup then
      local ik = P .. 'idem:' .. idem
      local prev = redis.call('GET', ik)
      if prev then
        if prev == id then
          dup = record_of(id)
          -- The same job again (an id the runner derives, as for a beat's
          -- fire) whose record has expired: it was stored once, that is all.
          if not dup then dup = rec end
        else
          dup = live_record(prev)
          if not dup then
            if prev == earlier then
              dup = redis.call('GET', P .. 'job:' .. prev)
            else
              again = prev
            end
          end
        end
      end
      if not dup and not again then
        redis.call('SET', ik, id, 'PX', idem_ttl)
        seen[idem] = rec
      end
    end
  end
  if again then
    out[#out + 1] = 'again'
    out[#out + 1] = again
  elseif dup then
    out[#out + 1] = 'dup'
    out[#out + 1] = dup
  else
    out[#out + 1] = 'new'
    out[#out + 1] = ''
    indexed[#indexed + 1] = 0
    indexed[#indexed + 1] = id
    -- A job that expires unrun leaves `live` when its time is past
    -- (`ends`, by the next due check).
    if ttl > 0 then
      now = now or server_ms()
      index_end(id, nil, now + ttl)
    end
    hset[#hset + 1] = id
    hset[#hset + 1] = rec
    if delay > 0 then
      now = now or server_ms()
      local due = now + delay
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = delayed_member(id, 0, p)
      if not wake or due < wake then wake = due end
    else
      if p > 0 then now = now or server_ms() end
      stage_ready(ready, prio, id .. '|0', p, now)
      -- (A job with an expiry is leased by a call, which stops its
      -- record's expiry: `settle.lua`.)
      if p == 0 and ttl == 0 and #rec <= RECORD_IN_MESSAGE_MAX and not string.find(rec, '"rate_limits":[', 1, true) then
        pushable[id .. '|0'] = rec
      end
    end
  end
end
if #hset > 0 then redis.call('HSET', P .. 'live', unpack(hset)) end
-- Jobs to wait or run: the history's depth before them (`hist_begin`).
if #ready > 0 or #prio > 0 or #delayed > 0 then
  now = now or server_ms()
  hist_begin(P, now)
end
-- Pushed to an idle worker: the first ready jobs, when nothing else waits
-- (so order and priorities hold) and they are plain (no rate limit, a
-- small record). One worker per call: the others are woken as usual.
local push = nil
if #ready > 0 and #prio == 0 and pushable[ready[1]] then
  local idle = redis.call('HGETALL', P .. 'idle')
  if #idle > 0 and redis.call('LLEN', P .. 'ready') == 0 and redis.call('ZCARD', P .. 'prio') == 0 then
    now = now or server_ms()
    local gone = {}
    for i = 1, #idle, 2 do
      local free, lease, until_ = string.match(idle[i + 1], '^(%d+)|(%d+)|(%d+)$')
      if free then
        if tonumber(until_) <= now then
          gone[#gone + 1] = idle[i]
        elseif not push and tonumber(free) > 0 then
          push = { w = idle[i], free = tonumber(free), lease = now + tonumber(lease) }
        end
      else
        -- A push's marker (`p|<until>`), kept until its worker's next call.
        local mark = string.match(idle[i + 1], '^p|(%d+)$')
        if not mark or tonumber(mark) <= now then gone[#gone + 1] = idle[i] end
      end
    end
    -- The chosen registration is used up: a marker takes its place, so
    -- that the worker's next call, if it comes before the push reaches
    -- it, leases nothing (the pushed jobs come first). Stale entries go.
    if push then redis.call('HSET', P .. 'idle', push.w, 'p|' .. (now + PUSH_MARK_MS)) end
    if #gone > 0 then redis.call('HDEL', P .. 'idle', unpack(gone)) end
  end
end
if push then
  local leases, index, jobs, evs = {}, {}, {}, {}
  local k = 0
  while k < push.free and k < #ready and pushable[ready[k + 1]] do
    k = k + 1
    local id = string.match(ready[k], '^[^|]+')
    local member = id .. '|0|' .. push.w .. '|' .. now
    leases[#leases + 1] = push.lease
    leases[#leases + 1] = member
    index[#index + 1] = id
    index[#index + 1] = member
    jobs[#jobs + 1] = member
    jobs[#jobs + 1] = pushable[ready[k]]
    evs[#evs + 1] = { id, 'STARTED' }
  end
  redis.call('ZADD', P .. 'leases', unpack(leases))
  redis.call('HSET', P .. 'leased', unpack(index))
  local rest = {}
  for i = k + 1, #ready do rest[#rest + 1] = ready[i] end
  ready = rest
  push.jobs, push.ev = jobs, evs
end
if #indexed > 0 then
  redis.call('ZADD', P .. 'jobs', unpack(indexed))
  hist_count('PENDING', #indexed / 2)
end
index_flush(P)
if #ready > 0 then redis.call('RPUSH', P .. 'ready', unpack(ready)) end
if #delayed > 0 then redis.call('ZADD', P .. 'delayed', unpack(delayed)) end
if #prio > 0 then redis.call('ZADD', P .. 'prio', unpack(prio)) end
hist_flush(P, now)
local readied = #ready + #prio / 2
if readied > 0 or wake or push then
  local msg = { q = qname }
  if push then
    msg.push, msg.w, msg.lease, msg.ev = push.jobs, push.w, push.lease, push.ev
  end
  if readied > 0 then msg.ready = readied end
  if #prio > 0 then msg.prio = 1 end
  if wake then msg.wake = wake end
  publish(chan, cjson.encode(msg))
end
out[#out + 1] = hist_seen and tostring(hist_seen) or ''
return out
