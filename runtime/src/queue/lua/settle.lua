-- One worker round trip: settle finished jobs, optionally move what is due,
-- lease new jobs (under the queue's global rate limits), publish one event.
-- Every time is the server's (TIME): lease deadlines, due times and rate
-- limit windows never depend on the calling worker's clock.
-- KEYS: the queue's keys (`queue_keys` in redis.rs, the ready list first),
--       the record key of each completion that ends its job, and the
--       rate-limit logs this call may touch (`rl:<key>` and `rl:<key>:tail`:
--       a job whose limits are not among them is left where it is, and
--       its keys are returned for the caller to declare next time).
-- ARGV: prefix, channel, queue, lease ms, worker, fetch max, due check (1/0), n completions,
--       skip own leases in next due (1/0), lease prioritized jobs first (1/0),
--       idle slots (when the fetch drains the queue, register this many of the
--       worker's free slots in `idle`, for the enqueue script to push jobs to;
--       0: none), whether the worker is registered there (1/0: else it is left alone),
--       then per completion: lease member, action, record, arg, id, alt record, alt ttl, state,
--       then the history minute the caller knows ('': none; `hist_known`)
-- action: F final (arg = ttl ms), D final + dead letter (arg = ttl ms),
--         R retry (arg = delay ms from now), H hand back;
--         a trailing 'p' clears stored progress.
-- Returns {leased {member, record}..., stale ids, next due, deferred until,
-- number of entries taken from ready (leased, deferred or dropped), now,
-- number of expired leases taken back, whether prioritized jobs may be
-- left ('1'/'0'; '' when not asked), workflow ends to apply again (due check),
-- how many jobs the worker's registration as idle offers ('0': none), whether jobs pushed to
-- it are on their way (so nothing was leased; '1'/'0'), rate-limit keys
-- a job needed but the call did not declare, the history minute the call
-- saw ('' when it changed nothing)}.
-- A job's record lives in `live` until it ends, then in `job:<id>` (a
-- final record found by a due check, whose key the call could not name,
-- stays in `live` until it expires: see `ends`).
local P, chan, qname = ARGV[1], ARGV[2], ARGV[3]
local lease_ms = ttl_ms(ARGV[4], 'lease')
local worker, fetch_max, due_check = ARGV[5], count(ARGV[6], 'fetch'), ARGV[7] == '1'
local nc = count(ARGV[8], 'completions')
local skip_own = ARGV[9] == '1'
local check_prio = ARGV[10] == '1'
local idle_slots = count(ARGV[11], 'idle slots')
local was_idle = ARGV[12] == '1'
local C = 13 -- the first completion's first argument
if #ARGV ~= C + nc * 8 then arg_error('count', #ARGV) end
hist_known(ARGV[C + nc * 8])
for j = 0, nc - 1 do
  local b = C + j * 8
  local kind = string.sub(ARGV[b + 1], 1, 1)
  if kind == 'F' or kind == 'D' then
    ttl_ms(ARGV[b + 3], 'ttl of completion ' .. j)
  elseif kind == 'R' then
    int_in(ARGV[b + 3], 0, MAX_MS, 'delay of completion ' .. j)
    ttl_ms(ARGV[b + 6], 'revoked ttl of completion ' .. j)
  elseif kind ~= 'H' then
    arg_error('action of completion ' .. j, ARGV[b + 1])
  end
end
local now = server_ms()
local ev, stale = {}, {}
-- Final records sent with their end events (a waiter needs no read).
local recs, has_recs = {}, false
-- Jobs with a priority made ready by this call: announced as such.
local prioritized = false
local readied = 0
local reclaimed = 0
local deferred = nil
-- A job's start in a rate-limit log (`rl:<key>`): logged by `limit` below
-- at the lease's time, withdrawn when the job is given back unrun.
local function rl_start(id, at) return id .. ':' .. at end
local function defer(t)
  if not deferred or t < deferred then deferred = t end
end
-- When the job of record `rec` expires (server ms, rounded up to the
-- next whole one as `expiry_wake` does), or nil without `expires`. The
-- record's times are RFC 3339 in UTC, as serde writes `DateTime<Utc>`.
local function rec_expires_ms(rec)
  local y, mo, d, h, mi, sec, frac = string.match(rec,
    '"expires":"(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)%.?(%d*)')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- Days since 1970-01-01 of a proleptic Gregorian date.
  if mo <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local days = era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
  local ms = ((days * 24 + tonumber(h)) * 60 + tonumber(mi)) * 60 + tonumber(sec)
  ms = ms * 1000 + (tonumber(string.sub(frac .. '000', 1, 3)) or 0)
  if string.find(string.sub(frac, 4), '[1-9]') then ms = ms + 1 end
  return ms
end
-- Job `id`, leased (its record's expiry stopped) and now back in the
-- queue unrun, expires again as a waiting job does: its record goes at its
-- expiry plus its result TTL (a workflow's step waits for a worker to end
-- it EXPIRED, as at enqueue).
local function expire_again(id)
  local rec = redis.call('HGET', P .. 'live', id)
  if not rec or string.find(rec, '"workflow":{', 1, true) then return end
  local exp = rec_expires_ms(rec)
  if not exp then return end
  local ttl = tonumber(string.match(rec, '"result_ttl_ms":(%d+)')) or 3600000
  index_end(id, nil, math.max(exp, now + 1) + ttl)
end
-- Ids whose record leaves `live` (it ended, and went to `job:<id>`).
local ended = {}
-- Ends job `id`, revoked while leased, when its lease is given back or
-- runs out: no run follows. The record's state is its first field, so a
-- prefix swap keeps the JSON intact. Its key was not declared: the final
-- record stays in `live` until it expires (`ends`), where reads find it.
local function end_revoked(id)
  local rec = redis.call('HGET', P .. 'live', id)
  if rec then
    local ttl = tonumber(string.match(rec, '"result_ttl_ms":(%d+)')) or 3600000
    local s = string.gsub(rec, '^{"state":"%u+"', '{"state":"REVOKED"', 1)
    redis.call('HSET', P .. 'live', id, s)
    index_end(id, 'REVOKED', now + ttl, s)
    ev[#ev + 1] = { id, 'REVOKED' }
  end
end

if nc > 0 then
  hist_begin(P, now)
  local members = {}
  for j = 0, nc - 1 do members[j + 1] = ARGV[C + j * 8] end
  local scores
  if nc == 1 then
    -- One result: ZREM itself says whether the lease was still ours.
    scores = { redis.call('ZREM', P .. 'leases', members[1]) == 1 }
  else
    scores = redis.call('ZMSCORE', P .. 'leases', unpack(members))
  end
  local held, dead, back, back_prio, delayed, clear, unexpire = {}, {}, {}, {}, {}, {}, {}
  for j = 0, nc - 1 do
    local b = C + j * 8
    local member, action, rec, arg = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    local id, alt, altttl, state = ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
    if not scores[j + 1] then
      stale[#stale + 1] = id
    else
      held[#held + 1] = member
      local kind = string.sub(action, 1, 1)
      if string.find(action, 'p', 2, true) then clear[#clear + 1] = id end
      if kind == 'F' or kind == 'D' then
        redis.call('SET', P .. 'job:' .. id, rec, 'PX', arg)
        ended[#ended + 1] = id
        index_end(id, state, now + tonumber(arg), rec)
        if kind == 'D' then
          dead[#dead + 1] = now
          dead[#dead + 1] = id
        end
        ev[#ev + 1] = { id, state }
        if #rec <= RECORD_IN_MESSAGE_MAX then
          recs[id] = rec
          has_recs = true
        end
      elseif kind == 'R' then
        if redis.call('ZSCORE', P .. 'revoked', id) then
          redis.call('SET', P .. 'job:' .. id, alt, 'PX', altttl)
          ended[#ended + 1] = id
          index_end(id, 'REVOKED', now + tonumber(altttl), alt)
          ev[#ev + 1] = { id, 'REVOKED' }
        else
          redis.call('HSET', P .. 'live', id, rec)
          -- The record no longer expires (as a job with `expires` did).
          if string.find(rec, '"expires":"', 1, true) then unexpire[#unexpire + 1] = id end
          local due = now + tonumber(arg)
          delayed[#delayed + 1] = due
          delayed[#delayed + 1] = delayed_member(id, 0, rec_priority(rec))
          defer(due)
          hist_count('RETRY')
          ev[#ev + 1] = { id, 'RETRY' }
        end
      elseif kind == 'H' then
        if redis.call('ZSCORE', P .. 'revoked', id) then
          -- Revoked meanwhile (its worker missed it): not put back.
          end_revoked(id)
        else
          local n = string.match(member, '^[^|]+|(%d+)|') or '0'
          stage_back(back, back_prio, P, id, id .. '|' .. n)
          expire_again(id)
        end
        -- Given back unrun (no `s` flag: a run the worker's shutdown
        -- stopped did start): its start (logged at the lease's time)
        -- leaves the rate-limit logs.
        local leased = not string.find(action, 's', 2, true) and string.match(member, '|(%d+)$')
        local rec = leased and redis.call('HGET', P .. 'live', id)
        if rec and string.find(rec, '"rate_limits":[', 1, true) then
          for _, r in ipairs(cjson.decode(rec).rate_limits) do
            -- Declared by the caller, which knows the job's limits.
            local k = P .. 'rl:' .. r.key
            if DECLARED[k] then redis.call('ZREM', k, rl_start(id, leased)) end
          end
        end
      end
    end
  end
  if #held > 0 and nc > 1 then redis.call('ZREM', P .. 'leases', unpack(held)) end
  if #held > 0 then
    local ids = {}
    for i, m in ipairs(held) do ids[i] = string.match(m, '^[^|]+') end
    redis.call('HDEL', P .. 'leased', unpack(ids))
  end
  if #dead > 0 then redis.call('ZADD', P .. 'dead', unpack(dead)) end
  if #delayed > 0 then redis.call('ZADD', P .. 'delayed', unpack(delayed)) end
  readied = readied + push_back(P, back, back_prio)
  if #back_prio > 0 then prioritized = true end
  if #clear > 0 then redis.call('HDEL', P .. 'progress', unpack(clear)) end
  if #ended > 0 then redis.call('HDEL', P .. 'live', unpack(ended)) end
  if #unexpire > 0 then redis.call('ZREM', P .. 'ends', unpack(unexpire)) end
end

local next_due = nil
local outbox = {}
local OUTBOX_STALE_MS = 10000
if due_check then
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now, 'LIMIT', 0, 1000)
  if #due > 0 then
    redis.call('ZREM', P .. 'delayed', unpack(due))
    local plain, prio = {}, {}
    for _, m in ipairs(due) do
      local id, n, p = string.match(m, '^([^|]+)|(%d+)|(%d)$')
      if p then
        stage_ready(plain, prio, id .. '|' .. n, tonumber(p), now)
      else
        stage_ready(plain, prio, m, 0, now)
      end
    end
    if #plain > 0 then redis.call('RPUSH', P .. 'ready', unpack(plain)) end
    if #prio > 0 then
      redis.call('ZADD', P .. 'prio', unpack(prio))
      prioritized = true
    end
    readied = readied + #due
  end
  local expired = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', 0, 1000)
  if #expired > 0 then
    hist_begin(P, now)
    reclaimed = #expired
    redis.call('ZREM', P .. 'leases', unpack(expired))
    local ids = {}
    for i, m in ipairs(expired) do ids[i] = string.match(m, '^[^|]+') or m end
    redis.call('HDEL', P .. 'leased', unpack(ids))
    local back, back_prio = {}, {}
    for _, m in ipairs(expired) do
      local id, n = string.match(m, '^([^|]+)|(%d+)|')
      if id then
        if redis.call('ZSCORE', P .. 'revoked', id) then
          -- Revoked while its worker was lost: end it here.
          end_revoked(id)
        else
          stage_back(back, back_prio, P, id, id .. '|' .. (tonumber(n) + 1))
          expire_again(id)
        end
      end
    end
    readied = readied + push_back(P, back, back_prio)
    if #back_prio > 0 then prioritized = true end
  end
  -- Records that expired leave the job index, and `live` (where the
  -- records of jobs that expire unrun, and finals kept there, wait).
  local gone = redis.call('ZRANGEBYSCORE', P .. 'ends', '-inf', now, 'LIMIT', 0, 1000)
  if #gone > 0 then
    index_forget(P, gone, true)
    redis.call('HDEL', P .. 'live', unpack(gone))
  end
  local d = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  if d[2] then next_due = tonumber(d[2]) end
  -- Workflow ends nobody applied (their applier died): handed out to
  -- apply again; the oldest left decides when to look next.
  outbox = redis.call('ZRANGEBYSCORE', P .. 'wfout', '-inf', now - OUTBOX_STALE_MS, 'LIMIT', 0, 100)
  local o = redis.call('ZRANGE', P .. 'wfout', #outbox, #outbox, 'WITHSCORES')
  if o[2] then
    local t = tonumber(o[2]) + OUTBOX_STALE_MS
    if not next_due or t < next_due then next_due = t end
  end
  -- Another worker's lease may run out (if it dies): wake then. Our own
  -- leases we extend ourselves, so the earliest lease that is not ours
  -- counts, wherever it is in the order (our own are at most as many as
  -- we hold: read in pages, bounded).
  -- A lease member is `<id>|<redeliveries>|<worker>|<ms>`: ours when its
  -- third field is our id (a worker named `0` is not in `<id>|0|w|..`).
  local function ours(m) return string.match(m, '^[^|]*|[^|]*|([^|]*)|') == worker end
  -- Pages grow from 8 (usually the first holds one of another worker's).
  local from, page, first_other = 0, 8, nil
  while not first_other and from < 8192 do
    local l = redis.call('ZRANGE', P .. 'leases', from, from + page - 1, 'WITHSCORES')
    for i = 1, #l, 2 do
      if not (skip_own and ours(l[i])) then
        first_other = tonumber(l[i + 1])
        break
      end
    end
    if #l < page * 2 then break end
    from = from + page
    page = math.min(page * 2, 1024)
  end
  if first_other and (not next_due or first_other < next_due) then
    next_due = first_other
  end
  -- Records expire as jobs end, and a check forgets at most 1,000: the
  -- next comes at once when more are past, else once 1,000 more are, so
  -- that the indexes keep within the records' TTLs at any rate of jobs.
  local forget_at = nil
  if #gone == 1000 then
    forget_at = now
  else
    local e = redis.call('ZRANGE', P .. 'ends', 999, 999, 'WITHSCORES')
    if e[2] then forget_at = tonumber(e[2]) end
  end
  if forget_at and (not next_due or forget_at < next_due) then
    next_due = forget_at
  end
end

-- Global rate limits (see ratelimit.rs for the rule). Returns nil when the
-- job may start now, else the time to try again; false when a log's keys
-- were not declared (they are noted in `undeclared`).
local undeclared, undeclared_seen = {}, {}

local function limit(rules, id)
  local missing = false
  for _, r in ipairs(rules) do
    local k = P .. 'rl:' .. r.key
    if not (DECLARED[k] and DECLARED[k .. ':tail']) then
      missing = true
      if not undeclared_seen[r.key] then
        undeclared_seen[r.key] = true
        undeclared[#undeclared + 1] = r.key
      end
    end
  end
  if missing then return false end
  local blocked = nil
  -- The limits that hold the job back: only their tails move (`ratelimit.rs`).
  local holding = {}
  for _, r in ipairs(rules) do
    local k = P .. 'rl:' .. r.key
    local period, cnt = tonumber(r.period_ms), tonumber(r.count)
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now - period)
    -- Counted, not read: only the start that frees the next slot is fetched.
    local c = redis.call('ZCARD', k)
    if c >= cnt then
      local start = redis.call('ZRANGE', k, c - cnt, c - cnt, 'WITHSCORES')
      local until_ = tonumber(start[2]) + period
      if not blocked or until_ > blocked then blocked = until_ end
      holding[#holding + 1] = r
    end
  end
  if blocked then
    local slot = math.max(blocked, now)
    for _, r in ipairs(holding) do
      local tail = tonumber(redis.call('GET', P .. 'rl:' .. r.key .. ':tail') or '0')
      local step = math.floor(tonumber(r.period_ms) / tonumber(r.count))
      if tail + step > slot then slot = tail + step end
    end
    for _, r in ipairs(holding) do
      redis.call('SET', P .. 'rl:' .. r.key .. ':tail', slot, 'PX', (slot - now) + tonumber(r.period_ms) * 2)
    end
    return slot
  end
  for _, r in ipairs(rules) do
    local k = P .. 'rl:' .. r.key
    redis.call('ZADD', k, now, rl_start(id, now))
    redis.call('PEXPIRE', k, tonumber(r.period_ms) * 2)
  end
  return nil
end

-- A worker registered as idle whose registration a push used up (the
-- enqueue left a marker): the pushed jobs are on their way to it and come
-- first, so this call leases nothing and says so.
local in_flight = '0'
if was_idle then
  local mark = redis.call('HGET', P .. 'idle', worker)
  if mark and string.sub(mark, 1, 2) == 'p|' then
    in_flight = '1'
    fetch_max = 0
  end
end

local out = {}
local popped = 0
local prio_left = ''
-- Leased jobs with an expiry: their records no longer expire (`ends`)
-- while they run; their end (or a retry) sets their time anew. Taken out
-- of `ends` after `index_flush`, which may write a time this call noted
-- for them before (one handed back above and leased again here).
local leased_expiring = {}
if fetch_max > 0 then
  -- Prioritized jobs first (highest, then earliest), then the list.
  local els = {}
  if check_prio then
    local pe = redis.call('ZPOPMIN', P .. 'prio', fetch_max)
    for i = 1, #pe, 2 do els[#els + 1] = pe[i] end
    prio_left = (#els >= fetch_max) and '1' or '0'
  end
  if #els < fetch_max then
    local r = redis.call('LPOP', P .. 'ready', fetch_max - #els)
    if r then
      for _, e in ipairs(r) do els[#els + 1] = e end
    end
  end
  if #els > 0 then
    popped = #els
    hist_begin(P, now, -popped)
    local ids = {}
    for i, e in ipairs(els) do ids[i] = string.match(e, '^[^|]+') end
    local recs = redis.call('HMGET', P .. 'live', unpack(ids))
    local leases, index = {}, {}
    -- Jobs whose rate-limit logs were not declared: back where they were.
    local undo, undo_prio = {}, {}
    local until_ = now + lease_ms
    for i, e in ipairs(els) do
      local rec = recs[i]
      if rec then
        local st = string.match(rec, '^{"state":"(%u+)"')
        if st == 'PENDING' or st == 'RETRY' then
          local id = string.match(e, '^[^|]+')
          local n = string.match(e, '|(%d+)') or '0'
          local slot = nil
          -- A job past its expiry does not run (its worker ends it
          -- EXPIRED): it takes no start and waits for none.
          if string.find(rec, '"rate_limits":[', 1, true) then
            local exp = rec_expires_ms(rec)
            if not (exp and exp <= now) then
              slot = limit(cjson.decode(rec).rate_limits, id)
            end
          end
          if slot == false then
            stage_back(undo, undo_prio, P, id, id .. '|' .. n)
          elseif slot then
            redis.call('ZADD', P .. 'delayed', slot, delayed_member(id, n, rec_priority(rec)))
            defer(slot)
          else
            local member = id .. '|' .. n .. '|' .. worker .. '|' .. now
            leases[#leases + 1] = until_
            leases[#leases + 1] = member
            index[#index + 1] = id
            index[#index + 1] = member
            out[#out + 1] = member
            out[#out + 1] = rec
            ev[#ev + 1] = { id, 'STARTED' }
            if string.find(rec, '"expires":"', 1, true) then
              leased_expiring[#leased_expiring + 1] = id
            end
          end
        end
      end
    end
    if #leases > 0 then
      redis.call('ZADD', P .. 'leases', unpack(leases))
      redis.call('HSET', P .. 'leased', unpack(index))
    end
    -- Put back (unpopped), first in line as they were.
    if #undo > 0 or #undo_prio > 0 then
      local back = {}
      for i = #undo, 1, -1 do back[#back + 1] = undo[i] end
      popped = popped - push_back(P, back, undo_prio)
    end
  end
end

-- An idle worker's registration: until it is used by a push, replaced by
-- the next call, or out of date (a worker that died while idle holds
-- pushed jobs until their lease runs out, then they run elsewhere).
local IDLE_MS = 60000
local registered = '0'
if idle_slots > 0 and fetch_max > 0 and popped < fetch_max and #undeclared == 0 then
  -- The jobs this call leased take slots too.
  local free = math.min(idle_slots, fetch_max) - #out / 2
  if free > 0 then
    redis.call('HSET', P .. 'idle', worker, free .. '|' .. lease_ms .. '|' .. (now + IDLE_MS))
    registered = tostring(free)
  end
end
if registered == '0' and was_idle then redis.call('HDEL', P .. 'idle', worker) end

index_flush(P, now)
if #leased_expiring > 0 then redis.call('ZREM', P .. 'ends', unpack(leased_expiring)) end
hist_flush(P, now)
if #ev > 0 or readied > 0 or deferred then
  local msg = { q = qname, w = worker }
  if #ev > 0 then msg.ev = ev end
  if has_recs then msg.rec = recs end
  if readied > 0 then msg.ready = readied end
  if deferred then msg.wake = deferred end
  if prioritized then msg.prio = 1 end
  if #out > 0 then msg.lease = now + lease_ms end
  publish(chan, cjson.encode(msg))
end
return { out, stale, next_due and tostring(next_due) or '', deferred and tostring(deferred) or '', popped, now, reclaimed, prio_left, outbox, registered, in_flight, undeclared,
  hist_seen and tostring(hist_seen) or '' }
