-- Argument checks, prepended to every script: a script checks all of its
-- arguments before its first write, so that a bad one is refused whole and
-- never leaves a job half-moved (out of one list, in no other).
local MAX_MS = 3155760000000 -- 100 years: the longest delay or TTL of a job
local MAX_TIME_MS = 100000000000000 -- a time in ms since 1970, beyond year 5000
-- The largest record a message carries (a job pushed to an idle worker, a
-- final record with its end event): pub/sub sends it to every subscriber
-- of the queue; a larger one is read by whoever needs it.
local RECORD_IN_MESSAGE_MAX = 16384
local function arg_error(what, v)
  error({ err = 'ERR bad argument ' .. what .. ': ' .. tostring(v) })
end
local function int_in(v, lo, hi, what)
  local n = tonumber(v)
  if not n or n ~= math.floor(n) or n < lo or n > hi then arg_error(what, v) end
  return n
end
-- A TTL or a duration in ms: 1 to MAX_MS.
local function ttl_ms(v, what) return int_in(v, 1, MAX_MS, what) end
-- A time in ms since 1970 (0: none).
local function time_ms(v, what) return int_in(v, 0, MAX_TIME_MS, what) end
-- A count.
local function count(v, what) return int_in(v, 0, 1000000000, what) end
-- The keys this call declared: a script touches no other key (strict
-- servers refuse it), so keys it cannot know in advance live in hashes it
-- can (see `redis.rs`, "Keys").
local DECLARED = {}
for _, k in ipairs(KEYS) do DECLARED[k] = true end
-- Publishes `msg` on a queue's channel `chan`: one with a hash tag
-- (`runner:{q}:ev`, on a cluster) is a shard channel (sharded pub/sub,
-- heard on the queue's own shard), any other a classic one.
local function publish(chan, msg)
  if string.find(chan, '{', 1, true) then
    redis.call('SPUBLISH', chan, msg)
  else
    redis.call('PUBLISH', chan, msg)
  end
end
-- The server's clock in ms: the one clock of every lease, due time and
-- rate limit window (workers' clocks may be off).
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The queue's history (`history.rs`): what this call counts, per state
-- (`PENDING`: enqueued), added by `hist_flush` into `hist`, one hash of
-- `<minute>:<what>` fields per queue. The depth is written once a minute
-- at most: `last` is the minute of the queue's last change, and the depth
-- now is the depth after it; the first change of a later minute first
-- writes that depth as `<last>:depth` and `<last>:running` (`hist_begin`).
local HIST_MINUTES = 60
local hist_counts, hist_begun = {}, false
-- The minute the caller last saw as `last` (from an earlier reply: see
-- `hist_known`), and the one this call saw or wrote, for its reply. `last`
-- only moves forward, to the server's current minute, so when the caller's
-- minute is the current one it is `last` still, and need not be read.
local hist_hint, hist_seen = nil, nil
local function hist_known(v)
  hist_hint = tonumber(v)
end
local function hist_count(what, n)
  hist_counts[what] = (hist_counts[what] or 0) + (n or 1)
end
-- Called before a call's first change of what waits or runs (at most once
-- a call does anything): when the queue last changed in an earlier minute,
-- the depth now is that minute's final depth. `dw`: what this call already
-- changed of the waiting jobs (a fetch begins after its pop; nil: nothing).
local function hist_begin(P, now, dw)
  if hist_begun then return end
  hist_begun = true
  now = now or server_ms()
  local k = P .. 'hist'
  local m = math.floor(now / 60000)
  hist_seen = m
  if hist_hint == m then return end
  local last = tonumber(redis.call('HGET', k, 'last'))
  if last == m then return end
  if not last then
    redis.call('HSET', k, 'last', m)
  else
    local waiting = redis.call('LLEN', P .. 'ready') + redis.call('ZCARD', P .. 'prio')
      + redis.call('ZCARD', P .. 'delayed') - (dw or 0)
    local running = redis.call('ZCARD', P .. 'leases')
    redis.call('HSET', k, last .. ':depth', waiting, last .. ':running', running, 'last', m)
  end
  -- A new minute: forget those before the window, keeping the newest
  -- depth forgotten as `base`; an hour without a change lets it expire.
  local old, newest = {}, nil
  for _, f in ipairs(redis.call('HKEYS', k)) do
    local fm = tonumber(string.match(f, '^(%d+):'))
    if fm and fm < m - HIST_MINUTES then
      old[#old + 1] = f
      if string.sub(f, -6) == ':depth' and (not newest or fm > newest) then newest = fm end
    end
  end
  if newest then
    local d = redis.call('HMGET', k, newest .. ':depth', newest .. ':running')
    redis.call('HSET', k, 'base', (d[1] or '0') .. ':' .. (d[2] or '0'))
  end
  if #old > 0 then redis.call('HDEL', k, unpack(old)) end
  redis.call('PEXPIRE', k, (HIST_MINUTES + 2) * 60000)
end
-- Writes what the call counted (a count without a change of the depth,
-- as a revoke of a ready job, begins too: the hash must expire).
local function hist_flush(P, now)
  if next(hist_counts) == nil then return end
  now = now or server_ms()
  hist_begin(P, now)
  local k = P .. 'hist'
  local m = math.floor(now / 60000)
  for what, n in pairs(hist_counts) do redis.call('HINCRBY', k, m .. ':' .. what, n) end
end

-- The job index (`list.rs`): `jobs` holds the id of every job of the queue
-- (all scored 0: UUIDv7 ids sort by their time), `jobs:<STATE>` the ids of
-- jobs that ended FAILURE, REVOKED or EXPIRED, and `ends` the ids of
-- records that expire, scored by when: a settle with a due check drops
-- those past it from all of them, so the index lives as long as the records.
local INDEXED = { 'FAILURE', 'REVOKED', 'EXPIRED' }
local index_ends, index_states, wf_ends = {}, {}, {}
-- Notes that job `id`'s record now ends `state` (nil: not final) and
-- expires at `at` (server ms); written by `index_flush`. A final record
-- `rec` of a workflow member also goes to the queue's workflow outbox
-- (`wfout`, `workflow.rs`), atomically with the record.
local function index_end(id, state, at, rec)
  if state then
    hist_count(state)
    if rec and string.find(rec, '"workflow":{', 1, true) then wf_ends[#wf_ends + 1] = id end
  end
  index_ends[#index_ends + 1] = at
  index_ends[#index_ends + 1] = id
  for _, s in ipairs(INDEXED) do
    if s == state then
      local l = index_states[s] or {}
      index_states[s] = l
      l[#l + 1] = 0
      l[#l + 1] = id
    end
  end
end
local function index_flush(P, now)
  if #index_ends > 0 then redis.call('ZADD', P .. 'ends', unpack(index_ends)) end
  for s, l in pairs(index_states) do redis.call('ZADD', P .. 'jobs:' .. s, unpack(l)) end
  if #wf_ends > 0 then
    now = now or server_ms()
    local o = {}
    for _, id in ipairs(wf_ends) do
      o[#o + 1] = now
      o[#o + 1] = id
    end
    redis.call('ZADD', P .. 'wfout', unpack(o))
  end
end
-- Drops `ids` from the expiry and state indexes (and when `all`, their
-- records being gone, from `jobs`, the dead letters and stored progress,
-- which nothing else removes for a job that ended without it).
local function index_forget(P, ids, all)
  redis.call('ZREM', P .. 'ends', unpack(ids))
  if all then
    redis.call('ZREM', P .. 'jobs', unpack(ids))
    redis.call('ZREM', P .. 'dead', unpack(ids))
    redis.call('HDEL', P .. 'progress', unpack(ids))
  end
  for _, s in ipairs(INDEXED) do redis.call('ZREM', P .. 'jobs:' .. s, unpack(ids)) end
end

-- Ready jobs of priority 1 to 9 wait in `prio` (those of priority 0 in the
-- `ready` list), scored so that ZPOPMIN takes the highest priority first
-- and, within one, the earliest. A delayed job of priority p is the member
-- `<id>|<redeliveries>|<p>`, so that it goes back to `prio` when due.
local function prio_score(p, t) return (10 - p) * 10000000000000 + t end
-- The priority of a record (a top-level field: inside the input or the
-- result a quote is escaped, so the pattern cannot match there).
local function rec_priority(rec) return tonumber(string.match(rec, '"priority":(%d)')) or 0 end
-- Stages `member` (`<id>|<redeliveries>`) of priority `p` among the ready
-- jobs a script is about to write: a pair of the `prio` set (scored at
-- `now`, the server's ms, needed when p > 0) or a member of the list.
local function stage_ready(ready, prio, member, p, now)
  if p > 0 then
    prio[#prio + 1] = prio_score(p, now)
    prio[#prio + 1] = member
  else
    ready[#ready + 1] = member
  end
end
-- Stages job `id` (`<id>|<redeliveries>` as `member`) going back to the
-- front of the ready jobs (a hand-back, a lost worker's lease): the front
-- of the list, or the first of its priority (its record says which).
local function stage_back(back, prio, P, id, member)
  local p = rec_priority(redis.call('HGET', P .. 'live', id) or '')
  if p > 0 then
    prio[#prio + 1] = prio_score(p, 0)
    prio[#prio + 1] = member
  else
    back[#back + 1] = member
  end
end
-- Writes what `stage_back` staged; returns how many jobs it made ready.
local function push_back(P, back, prio)
  if #back > 0 then redis.call('LPUSH', P .. 'ready', unpack(back)) end
  if #prio > 0 then redis.call('ZADD', P .. 'prio', unpack(prio)) end
  return #back + #prio / 2
end
-- The delayed member of job `id` of priority `p`.
local function delayed_member(id, n, p)
  if p > 0 then return id .. '|' .. n .. '|' .. p end
  return id .. '|' .. n
end
