//! The Redis broker.
//!
//! # Keys
//!
//! Every key of queue `q` starts with `runner:{q}:` so that a queue lives in
//! one Redis Cluster slot and one script may touch all of it:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `ready` | list | `<id>\|<redeliveries>` of jobs of priority 0 that may run now |
//! | `prio` | zset | same members for jobs of priority 1 to 9, scored so that ZPOPMIN takes the highest priority, then the earliest (`lua/check.lua`) |
//! | `delayed` | zset | same members (`<id>\|<redeliveries>\|<priority>` for a priority above 0), scored by due time (ms): countdown, ETA, retry backoff, rate limit |
//! | `leases` | zset | `<id>\|<redeliveries>\|<worker>\|<leased ms>`, scored by lease deadline |
//! | `leased` | hash | id -> its member of `leases` (status and revoke look a lease up by id) |
//! | `idle` | hash | worker -> `<free slots>\|<lease ms>\|<until ms>`: workers whose last fetch found the queue empty; the next enqueue leases jobs straight to one of them and publishes them (`push`), leaving `p\|<until ms>` until that worker's next call |
//! | `live` | hash | id -> record (JSON) of a job that waits or runs (and of a job ended by a due check, until it expires: see `ends`) |
//! | `job:<id>` | string | the record of a job that ended, with its TTL |
//! | `idem:<key>` | string | the id of the job enqueued with that idempotency key |
//! | `layout` | string | `2`: the records are laid out as here (`RedisBroker::migrate_layout`) |
//! | `dead` | zset | dead-lettered ids, scored by time of death |
//! | `revoked` | zset | running jobs revoked (kept a day) |
//! | `terminate` | zset | those of them whose run must be stopped, for workers that missed the message |
//! | `progress` | hash | id -> latest progress of a running job |
//! | `rl:<key>` | zset | start log of a rate limit (see `ratelimit.rs`), and `rl:<key>:tail` |
//! | `jobs` | zset | every job's id, all scored 0 (UUIDv7 ids sort by time): the index of `GET /v1/jobs` (`list.rs`) |
//! | `jobs:<STATE>` | zset | the ids of jobs that ended FAILURE, REVOKED or EXPIRED |
//! | `ends` | zset | ids of records that expire, scored by when: a settle with a due check drops those past it from the three above and from `live` |
//! | `hist` | hash | the last hour minute by minute, written by the scripts that change job state: `<minute>:<STATE>` counts, `<minute>:depth` / `:running` after the minute's last change (written by the next minute's first change), `last` (the minute of the last change), `base` (`history.rs`) |
//!
//! Outside the queues: `runner:{ids}:<hour>` (hash id -> queue of the jobs
//! whose ids were made in that hour: the index by which status and revoke
//! find a job's queue, kept at least as long as the records it names;
//! written by the enqueue, and for a workflow's steps by `wf_index` when it
//! starts),
//! `runner:queues` (set of names), `runner:{workers}:<id>`
//! (heartbeats with a TTL) and `runner:{workers}` (their ids: listing
//! workers scans nothing and, all in one slot, reads one node of a
//! cluster), pub/sub channels `runner:q:<queue>` (job events
//! and wake-ups; on a cluster the shard channel `runner:{<queue>}:ev`,
//! see below), `runner:control` (revokes and inspect requests),
//! `runner:queues:new` (a queue's first enqueue, on a cluster) and
//! `runner:reply:<id>` (workers' answers to one inspect request).
//!
//! Every script declares in KEYS every key it touches (the queue's keys
//! above, [`QUEUE_KEYS`], then the `job:<id>`, `idem:<key>` and `rl:<key>`
//! it names), as strict servers require: what a call only finds out as it
//! runs (the records it pops) is kept where it can be declared (`live`).
//! `docs/scaling.md` ("Declared keys") says how.
//!
//! # Redis Cluster
//!
//! With a `redis+cluster://` URL ([`RedisEndpoint`]) the same keys and
//! scripts run on a Redis Cluster: every script touches the keys of one
//! slot only (a queue's `{q}`, a workflow's `{wf:<id>}`, the index's
//! `{ids}`), and what spans slots is a sequence of idempotent steps (a
//! settle writes a workflow end into its queue's outbox, `wfout`; the
//! engine applies it to the workflow's slot, then enqueues the next steps
//! into theirs). Reads that name keys of several slots (the workers'
//! heartbeats, one read per queue) go out as commands to each slot's
//! node, at once ([`Counted`]). Job events and wake-ups use sharded
//! pub/sub: the scripts `SPUBLISH` on the queue's shard channel, in its
//! slot, and workers and event feeds `SSUBSCRIBE` to it on that slot's
//! master (`shard_feed.rs`), unless the URL says `?pubsub=classic`.
//!
//! # Cost
//!
//! A producer stores a whole batch with one script (EVALSHA, HSET, RPUSH,
//! PUBLISH) and indexes it with another sent beside it (EVALSHA, HSET,
//! PTTL, PEXPIRE: no extra round trip). A worker settles every finished
//! job and leases new ones in one script (EVALSHA, ZMSCORE, one SET per
//! result, HDEL, ZREM, LPOP, HMGET, ZADD, HSET, PUBLISH). So a job costs one
//! command (its result) plus its share of a few per batch: `runner bench
//! queue` measures about 1.24 per job (commands inside scripts counted),
//! and a job enqueued and run entirely alone 28 (pushed to an idle
//! worker). The job index adds one ZADD per enqueue call and one
//! per settle that ends jobs (two when some failed); a page of `GET
//! /v1/jobs` costs one ZRANGE per queue read and, per 250 entries looked
//! at, one MGET and one HMGET of `live` (and one HMGET of leases while
//! some are not final). A status read costs HGET, then GET and HGET in one
//! round trip (and the status
//! script while the job has not ended), whatever the number of queues. A
//! purge reads its queue 500 entries a page (LRANGE or ZRANGE, MGET, HMGET) and
//! ends the page's jobs with one script (`lua/purge.lua`). An idle worker sends
//! nothing but its heartbeat: it waits on pub/sub, and sets a timer for the
//! earliest delayed job instead of polling.
//!
//! # One clock
//!
//! Scripts take their times from the server (`TIME`): lease deadlines, due
//! times of countdowns and retries, rate-limit windows. Callers send
//! durations (a lease, a delay), never instants of their own clock, and the
//! broker turns the instants the server sends back into the caller's clock
//! (see `Clock`). A worker whose clock is off reclaims nothing early.
//!
//! Every script checks all of its arguments before its first write
//! (`lua/check.lua`, prepended to each): a bad one is refused whole.
//!
//! An enqueue call whose reply is lost is not repeated by this client: a
//! caller that retries should set an idempotency key.
//!
//! Blocking waits use dedicated pub/sub connections, which have no response
//! timeout; commands go through a `ConnectionManager` that reconnects.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use redis::{AsyncCommands, Script, Value};
use runner_host_fns::redis_conn::Counted;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::endpoint::ShardSeeds;
pub use super::endpoint::{
    ClusterUrl, RedisEndpoint, RedisTls, cluster_url, open_client, open_client_with, redact_url,
};
use super::history::Minutes;
use super::job::{DEAD_LETTER_TTL, Job, JobId, JobState, MAX_DELAY, Progress, RateLimit};
use super::list::{JobPage, JobQuery, Walk, Window, parse_cursor};
use super::shard_feed::{Discover, ShardChannels, ShardFeed};
use super::workflow::RUNNING_TTL;
use super::{
    Broker, BrokerError, BrokerResult, Completion, Delivery, Enqueued, Extended, JobEvent, Lease,
    LeaseMember, PURGED, PurgeFilter, QueueStats, RecordWant, RecordWants, RevokeOutcome,
    SettleReply, SettleRequest, Settlement, Signal, WfMark, WfMarked, WfState, WfStored,
    WorkerInfo, WorkerSnapshot, earlier, gather_answers, ms_to_time, show_open,
};

const QUEUES_KEY: &str = "runner:queues";
const CONTROL_CHANNEL: &str = "runner:control";
/// Jobs per enqueue script call: keeps Lua's `unpack` well inside its stack.
const ENQUEUE_CHUNK: usize = 1000;
/// The most jobs one settle script leases, and ends ([`RedisBroker::settle`]).
const SETTLE_MAX: usize = 1000;

/// Adds what a further call of one settle leased (`r`) to its reply.
fn merge_leases(out: &mut SettleReply, r: SettleReply) {
    out.deliveries.extend(r.deliveries);
    out.popped += r.popped;
    out.deferred_until = earlier(out.deferred_until, r.deferred_until);
    out.prioritized_left |= r.prioritized_left;
    out.offered = r.offered;
    out.push_in_flight |= r.push_in_flight;
}
/// Enqueue calls for one chunk at most: an idempotency key that names an
/// ended job costs a second (`enqueue_chunk`), and only a key replaced
/// between the two (by another producer) a third.
const ENQUEUE_ROUNDS: usize = 4;

/// Entries a purge reads and changes per call.
const PURGE_PAGE: usize = 500;
/// The ids of workers that sent a heartbeat (each also has its key
/// `runner:{workers}:<id>`, with a TTL: one slot for all of them).
const WORKERS_KEY: &str = "runner:{workers}";

/// The heartbeat key of worker `id`.
fn worker_key(id: &str) -> String {
    format!("{WORKERS_KEY}:{id}")
}

/// How long past its due time an index entry is kept for a job that has
/// not ended (plus its result TTL): a job that ends later refreshes it.
const INDEX_RETAIN_MS: u64 = 24 * 3600 * 1000;
/// The longest TTL a script accepts (`check.lua`'s `MAX_MS`).
const MAX_TTL_MS: u64 = MAX_DELAY.as_millis() as u64;

/// When id `id` was made, in ms since 1970 (ids are UUIDv7); None for an
/// id without a timestamp (not one the runner made).
fn id_ms(id: JobId) -> Option<i64> {
    let (secs, nanos) = id.0.get_timestamp()?.to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}

/// The index bucket that says which queue holds job `id`: the hour of the
/// id's timestamp, in the index's own slot (`{ids}`).
fn index_key(id: JobId) -> Option<String> {
    Some(format!("runner:{{ids}}:{}", id_ms(id)? / 3_600_000))
}

/// An id's age on `now` (ms since 1970), from its timestamp.
fn id_age_ms(id: JobId, now: i64) -> i64 {
    id_ms(id).map_or(0, |made| now - made)
}

fn prefix(queue: &str) -> String {
    format!("runner:{{{queue}}}:")
}

/// A queue's classic channel (one server, or a cluster URL with
/// `?pubsub=classic`).
fn channel(queue: &str) -> String {
    format!("runner:q:{queue}")
}

/// A queue's shard channel on a cluster: in the queue's slot, so its
/// scripts publish there (`SPUBLISH`) and it is heard on the queue's own
/// shard (`shard_feed.rs`).
fn shard_channel(queue: &str) -> String {
    format!("runner:{{{queue}}}:ev")
}

/// The shard channels of `queues`.
fn shard_channels(queues: &[String]) -> Vec<String> {
    queues.iter().map(|q| shard_channel(q)).collect()
}

/// Where a process that creates a queue says so, on a cluster with
/// sharded pub/sub: event feeds subscribe to the new queue's channel.
const NEW_QUEUE_CHANNEL: &str = "runner:queues:new";

/// The record of workflow `id`: a slot of its own (`workflow.rs`).
fn wf_key(id: JobId) -> String {
    format!("runner:{{wf:{id}}}")
}

/// Where workflow events are published (one channel the event hub hears).
const WF_CHANNEL: &str = "runner:q:~wf";

/// A script's source as sent: the shebang, the strict-key check when
/// asked for ([`STRICT_KEYS_LUA`](runner_host_fns::redis_conn::STRICT_KEYS_LUA)),
/// the argument checks, then `body`.
fn script_source(body: &str, strict: bool) -> String {
    let strict = if strict {
        runner_host_fns::redis_conn::STRICT_KEYS_LUA
    } else {
        ""
    };
    format!("#!lua\n{strict}\n{}\n{body}", include_str!("lua/check.lua"))
}

/// The keys of a queue the queue's scripts may touch, after its prefix:
/// every call declares them all in KEYS (`ready` first: it routes a call
/// to the queue's slot), then the keys of single jobs it names.
const QUEUE_KEYS: [&str; 18] = [
    "ready",
    "prio",
    "delayed",
    "leases",
    "leased",
    "idle",
    "hist",
    "ends",
    "jobs",
    "jobs:FAILURE",
    "jobs:REVOKED",
    "jobs:EXPIRED",
    "dead",
    "revoked",
    "terminate",
    "progress",
    "wfout",
    "live",
];

/// Declares queue `p`'s keys ([`QUEUE_KEYS`]) in a call.
fn queue_keys(inv: &mut redis::ScriptInvocation<'_>, p: &str) {
    for k in QUEUE_KEYS {
        inv.key(format!("{p}{k}"));
    }
}

/// The record key of a job that ended (`job:<id>`).
fn final_key(p: &str, id: impl std::fmt::Display) -> String {
    format!("{p}job:{id}")
}

/// Adds the three reads of job `id`'s record in `queue` to `pipe`: its
/// final record, its record in `live` (at most one of the two exists),
/// and when that one expires (`ends`); see [`RedisBroker::pick_record`].
fn read_record(pipe: &mut redis::Pipeline, queue: &str, id: JobId) {
    let p = prefix(queue);
    pipe.get(final_key(&p, id))
        .hget(live_key(&p), id.to_string())
        .zscore(format!("{p}ends"), id.to_string());
}

/// Where the records of a queue's waiting and running jobs are.
fn live_key(p: &str) -> String {
    format!("{p}live")
}

/// The layout of a queue's keys that this build reads and writes (`layout`,
/// see [`RedisBroker::migrate_layout`]).
const LAYOUT: &str = "2";

struct Scripts {
    enqueue: Script,
    settle: Script,
    extend: Script,
    status: Script,
    revoke: Script,
    replay: Script,
    index: Script,
    purge: Script,
    wf_create: Script,
    wf_mark: Script,
    wf_end: Script,
    wf_launched: Script,
    outbox: Script,
    outbox_later: Script,
    migrate: Script,
}

impl Scripts {
    fn new(strict: bool) -> Self {
        // Every script starts with the argument checks of `check.lua`, and
        // with a shebang: on a cluster, Redis then refuses a script that
        // touches a key outside the slot of its first key (scripts
        // without one may touch any slot the node holds), so a script
        // that strays fails every test on the cluster.
        let script = |body: &str| Script::new(&script_source(body, strict));
        Scripts {
            enqueue: script(include_str!("lua/enqueue.lua")),
            settle: script(include_str!("lua/settle.lua")),
            extend: script(include_str!("lua/extend.lua")),
            status: script(include_str!("lua/status.lua")),
            revoke: script(include_str!("lua/revoke.lua")),
            replay: script(include_str!("lua/replay.lua")),
            index: script(include_str!("lua/index.lua")),
            purge: script(include_str!("lua/purge.lua")),
            wf_create: script(include_str!("lua/wf_create.lua")),
            wf_mark: script(include_str!("lua/wf_mark.lua")),
            wf_end: script(include_str!("lua/wf_end.lua")),
            wf_launched: script(include_str!("lua/wf_launched.lua")),
            outbox: script(include_str!("lua/outbox.lua")),
            outbox_later: script(include_str!("lua/outbox_later.lua")),
            migrate: script(include_str!("lua/migrate.lua")),
        }
    }

    /// Their names, for the `command` label of Redis errors.
    fn named(&self) -> [(&'static str, &Script); 15] {
        [
            ("enqueue", &self.enqueue),
            ("settle", &self.settle),
            ("extend", &self.extend),
            ("status", &self.status),
            ("revoke", &self.revoke),
            ("replay", &self.replay),
            ("index", &self.index),
            ("purge", &self.purge),
            ("wf_create", &self.wf_create),
            ("wf_mark", &self.wf_mark),
            ("wf_end", &self.wf_end),
            ("wf_launched", &self.wf_launched),
            ("outbox", &self.outbox),
            ("outbox_later", &self.outbox_later),
            ("migrate", &self.migrate),
        ]
    }
}

struct Inner {
    endpoint: RedisEndpoint,
    conn: Counted,
    scripts: Scripts,
    known_queues: Mutex<HashSet<String>>,
    /// Queues whose keys this process has seen in [`LAYOUT`] (migrated).
    laid_out: Mutex<HashSet<String>>,
    /// Per queue, the rate-limit keys its jobs were seen to need: a settle
    /// call declares their logs.
    limit_keys: Mutex<HashMap<String, Vec<String>>>,
    hub: Mutex<Option<Hub>>,
    /// Set by [`RedisBroker::close`]: the hubs on shard channels stop.
    stop: tokio::sync::watch::Sender<bool>,
    /// Those hubs' tasks, for `close` to wait for.
    hub_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    idempotency_ttl: Duration,
    clock: Arc<Clock>,
    liveness: Liveness,
    /// Heartbeats sent per worker id by this process.
    heartbeats: Mutex<HashMap<String, u64>>,
    /// Per queue, the minute its history last began (`hist` `last`) as the
    /// scripts last said: a script that runs in that minute still need not
    /// read it (`hist_known` in `check.lua`).
    hist_minutes: Mutex<HashMap<String, String>>,
    /// The final records the event feed hands on ([`RecordWants`]).
    record_wants: Arc<Mutex<RecordWants>>,
}

/// How this process's clock relates to the Redis server's. Every script
/// takes its times from the server (`TIME`): lease deadlines, due times and
/// rate-limit windows do not depend on which worker asks, so a worker whose
/// clock runs ahead cannot reclaim live leases. Times the server hands back
/// to wait for (next due, wake-ups, lease ends) are turned into this
/// process's clock with the offset measured at the last settle; when a job
/// was leased stays on the server's clock, like the rate limiter's windows.
#[derive(Default)]
struct Clock {
    /// Added to the system clock: a test's way to run a skewed worker.
    skew_ms: i64,
    /// The server's clock minus this process's, as last measured.
    offset_ms: AtomicI64,
}

impl Clock {
    /// This process's clock, in ms since 1970.
    fn local_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.skew_ms
    }

    fn now(&self) -> DateTime<Utc> {
        ms_to_time(self.local_ms())
    }

    /// The server said it was `server_ms` somewhere between `sent` and now
    /// (local ms).
    fn observe(&self, server_ms: i64, sent: i64) {
        let local = sent + (self.local_ms() - sent) / 2;
        self.offset_ms.store(server_ms - local, Ordering::Relaxed);
    }

    /// A server time, on this process's clock.
    fn local(&self, server_ms: i64) -> DateTime<Utc> {
        ms_to_time(server_ms - self.offset_ms.load(Ordering::Relaxed))
    }
}

/// The production broker. Cheap to clone.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl RedisBroker {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS with
    /// the system's roots, `redis+cluster://host:port,host:port` for a
    /// Redis Cluster: see [`RedisEndpoint`]).
    pub async fn connect(url: &str) -> BrokerResult<Self> {
        Self::connect_with(url, &RedisTls::default()).await
    }

    /// [`connect`](Self::connect) with the TLS files `tls`.
    pub async fn connect_with(url: &str, tls: &RedisTls) -> BrokerResult<Self> {
        let endpoint = RedisEndpoint::open(url, tls)?;
        let conn = endpoint.connect().await?;
        let scripts = Scripts::new(false);
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                endpoint,
                conn: conn.with_scripts(scripts.named()),
                scripts,
                known_queues: Mutex::new(HashSet::new()),
                laid_out: Mutex::new(HashSet::new()),
                limit_keys: Mutex::new(HashMap::new()),
                hub: Mutex::new(None),
                stop: tokio::sync::watch::Sender::new(false),
                hub_tasks: Mutex::new(Vec::new()),
                idempotency_ttl: Duration::from_secs(24 * 3600),
                clock: Arc::new(Clock::default()),
                liveness: Liveness::default(),
                heartbeats: Mutex::new(HashMap::new()),
                hist_minutes: Mutex::new(HashMap::new()),
                record_wants: Arc::default(),
            }),
        })
    }

    /// This broker as a process whose clock is `skew_ms` off (tests: the
    /// server's clock must be the only one that counts). Call it right
    /// after `connect`.
    pub fn with_clock_skew(mut self, skew_ms: i64) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.clock = Arc::new(Clock {
                skew_ms,
                ..Clock::default()
            });
        }
        self
    }

    /// This broker with scripts that refuse to touch a key they did not
    /// declare in KEYS, as strict servers do (Dragonfly, Kvrocks with
    /// `lua-strict-key-accessing`; `runner_host_fns::redis_conn::STRICT_KEYS_LUA`).
    /// Slower: for tests.
    /// Call it right after `connect`.
    pub fn with_strict_keys(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.scripts = Scripts::new(true);
            inner.conn = inner.conn.clone().with_scripts(inner.scripts.named());
        }
        self
    }

    /// How its pub/sub connections are checked ([`Liveness`]). Call it
    /// right after `connect`.
    pub fn with_liveness(mut self, live: Liveness) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.liveness = live;
        }
        self
    }

    fn conn(&self) -> Counted {
        self.inner.conn.clone()
    }

    /// Whether queue events go over sharded pub/sub (a cluster whose URL
    /// does not say `?pubsub=classic`).
    fn sharded(&self) -> bool {
        self.inner.endpoint.shards().is_some()
    }

    /// The channel of `queue`'s events and wake-ups.
    fn chan(&self, queue: &str) -> String {
        if self.sharded() {
            shard_channel(queue)
        } else {
            channel(queue)
        }
    }

    /// Stops this broker's event feed on shard channels and waits until
    /// its connection is closed (its receivers see the feed end). For a
    /// caller about to take the cluster down, so that no subscription is
    /// left to report it (`runner bench queue --cluster`); a feed on
    /// classic pub/sub stops once nobody listens. For good: a feed
    /// started after it stops at once.
    pub async fn close(&self) {
        self.inner.stop.send_replace(true);
        let tasks = std::mem::take(
            &mut *self
                .inner
                .hub_tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The command connection, for the registry (which shares it) and for
    /// callers that measure Redis itself (`runner bench`).
    pub fn connection(&self) -> Counted {
        self.inner.conn.clone()
    }

    /// Where this broker's Redis is.
    pub fn endpoint(&self) -> &RedisEndpoint {
        &self.inner.endpoint
    }

    /// The queue and record of job `id`: its final record (`job:<id>`)
    /// or, while it waits or runs, its record in `live`. The index names the queue (two
    /// commands whatever the number of queues); an id it does not know (an
    /// unknown id, a job older than the index, one that waited more than a
    /// day unrun) is looked for in every queue.
    async fn find_record(&self, id: JobId) -> BrokerResult<Option<(String, String)>> {
        let mut conn = self.conn();
        if let Some(bucket) = index_key(id) {
            let queue: Option<String> = conn.hget(&bucket, id.to_string()).await?;
            if let Some(q) = queue {
                let mut pipe = redis::pipe();
                read_record(&mut pipe, &q, id);
                let (fin, live, ends) = pipe.query_async(&mut conn).await?;
                return Ok(self.pick_record(fin, live, ends).map(|r| (q, r)));
            }
        }
        let queues: Vec<String> = conn.smembers(QUEUES_KEY).await?;
        if queues.is_empty() {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for q in &queues {
            read_record(&mut pipe, q, id);
        }
        let reads: Vec<Value> = pipe.query_async(&mut conn).await?;
        for (q, r) in queues.into_iter().zip(reads.chunks(3)) {
            let [fin, live, ends] = r else { break };
            let rec = self.pick_record(
                redis::from_redis_value_ref(fin).map_err(redis::RedisError::from)?,
                redis::from_redis_value_ref(live).map_err(redis::RedisError::from)?,
                redis::from_redis_value_ref(ends).map_err(redis::RedisError::from)?,
            );
            if let Some(rec) = rec {
                return Ok(Some((q, rec)));
            }
        }
        Ok(None)
    }

    /// A job's record from its reads ([`read_record`]): the final one, or
    /// the one in `live` unless its time in `ends` is past (a due check
    /// drops it from `live` later; until then it is as good as gone, as a
    /// key past its TTL is).
    fn pick_record(
        &self,
        fin: Option<String>,
        live: Option<String>,
        ends: Option<f64>,
    ) -> Option<String> {
        let expired = |at: f64| self.inner.clock.local(at as i64) <= self.inner.clock.now();
        fin.or_else(|| live.filter(|_| !ends.is_some_and(expired)))
    }

    /// One read of job `id` (see [`Broker::get`]).
    async fn get_once(&self, id: JobId) -> BrokerResult<Option<Job>> {
        let Some((queue, rec)) = self.find_record(id).await? else {
            return Ok(None);
        };
        let mut job = Job::from_json(&rec)?;
        if job.state.is_final() {
            return Ok(Some(job));
        }
        let p = prefix(&queue);
        let mut inv = self.inner.scripts.status.prepare_invoke();
        queue_keys(&mut inv, &p);
        let reply: Value = inv
            .key(final_key(&p, id))
            .arg(&p)
            .arg(id.to_string())
            .invoke_async(&mut self.conn())
            .await?;
        let parts = as_array(reply);
        if parts.len() == 3 {
            if let Some(rec) = as_string(&parts[0]) {
                job = Job::from_json(&rec)?;
            }
            let lease = as_string(&parts[1]).unwrap_or_default();
            show_open(&mut job, LeaseMember::parse(&lease), self.inner.clock.now());
            let prog = as_string(&parts[2]).unwrap_or_default();
            if !prog.is_empty() {
                job.progress = serde_json::from_str(&prog).ok();
            }
        }
        Ok(Some(job))
    }

    /// Writes index entries (`id` is in `queue`, keep the entry at least
    /// `ttl` ms), one script call per bucket. Callers send it beside the
    /// script that stores the records, so it adds no round trip.
    async fn index(&self, entries: &[(JobId, &str, u64)]) -> BrokerResult<()> {
        let mut buckets: Vec<(String, u64, Vec<String>)> = Vec::new();
        for &(id, queue, ttl) in entries {
            let Some(key) = index_key(id) else { continue };
            let ttl = ttl.clamp(1, MAX_TTL_MS);
            let at = match buckets.iter().position(|b| b.0 == key) {
                Some(i) => i,
                None => {
                    buckets.push((key, 0, Vec::new()));
                    buckets.len() - 1
                }
            };
            let b = &mut buckets[at];
            b.1 = b.1.max(ttl);
            b.2.push(id.to_string());
            b.2.push(queue.to_string());
        }
        for (key, ttl, pairs) in buckets {
            let mut inv = self.inner.scripts.index.prepare_invoke();
            inv.key(key).arg(ttl).arg(pairs);
            inv.invoke_async::<()>(&mut self.conn()).await?;
        }
        Ok(())
    }

    /// Starts the one subscription that feeds every event stream and long
    /// poll of this process. It outlives dropped connections: it
    /// resubscribes (PINGs find silent drops) and goes on, so open streams
    /// see a gap, never an end. It stops once nobody listens.
    async fn start_hub(&self) -> BrokerResult<Hub> {
        if let Some(seeds) = self.inner.endpoint.shards() {
            return self.start_shard_hub(seeds).await;
        }
        let client = self.inner.endpoint.clone();
        let subscribe = |client: RedisEndpoint| async move {
            let mut pubsub = client.pubsub().await?;
            pubsub.psubscribe("runner:q:*").await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let first = subscribe(client.clone()).await?;
        let (tx, _) = broadcast::channel(65_536);
        let sender = tx.clone();
        let live = self.inner.liveness;
        let weak = Arc::downgrade(&self.inner);
        let wants = self.inner.record_wants.clone();
        tokio::spawn(async move {
            let idle = || hub_idle(&weak, &tx, false);
            let mut next = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Some(ps) = next.take() {
                    let stopped = listen(ps, live, idle, |msg| {
                        if let Ok(payload) = msg.get_payload::<String>() {
                            hub_send(&tx, &wants, &payload);
                        }
                        true
                    })
                    .await;
                    // Nobody listens any more (a process shutting down, its
                    // Redis with it): not an outage to report.
                    if stopped || idle() {
                        return;
                    }
                    tracing::warn!("the job event feed lost Redis; resubscribing");
                    metrics::counter!("runner_redis_reconnects_total", "connection" => "events")
                        .increment(1);
                }
                tokio::time::sleep(backoff).await;
                match subscribe(client.clone()).await {
                    Ok(ps) => {
                        next = Some(ps);
                        backoff = Duration::from_millis(100);
                        // Whatever was published meanwhile is lost: say so.
                        let _ = tx.send(JobEvent::gap());
                    }
                    Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                }
            }
        });
        Ok(Hub {
            tx: sender,
            shards: None,
        })
    }

    /// The hub on shard channels (a cluster with sharded pub/sub): every
    /// queue's channel, the workflows' channel and the announcements of
    /// new queues, whose channels it then subscribes. A feed that ends
    /// ends the hub (its receivers see it close and subscribe again).
    async fn start_shard_hub(&self, seeds: &ShardSeeds) -> BrokerResult<Hub> {
        let queues: Vec<String> = self.conn().smembers(QUEUES_KEY).await?;
        let classic = vec![WF_CHANNEL.to_string(), NEW_QUEUE_CHANNEL.to_string()];
        let discover = Discover {
            set: QUEUES_KEY,
            channel: shard_channel,
        };
        let feed = ShardFeed::open(seeds, shard_channels(&queues), classic, Some(discover)).await?;
        let channels = feed.channels();
        let (tx, _) = broadcast::channel(65_536);
        let sender = tx.clone();
        let live = self.inner.liveness;
        let weak = Arc::downgrade(&self.inner);
        let wants = self.inner.record_wants.clone();
        let more = channels.clone();
        let mut stop = self.inner.stop.subscribe();
        let task = tokio::spawn(async move {
            let stopped = feed
                .listen(
                    live,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                    || hub_idle(&weak, &tx, false),
                    |chan, payload| {
                        if chan == NEW_QUEUE_CHANNEL {
                            let (more, queue) = (more.clone(), shard_channel(payload));
                            tokio::spawn(async move {
                                if let Err(e) = more.ensure(&[queue]).await {
                                    tracing::warn!(error = %e, "subscribing to a new queue's events");
                                }
                            });
                        } else {
                            hub_send(&tx, &wants, payload);
                        }
                        true
                    },
                    // Whatever was published meanwhile is lost: say so.
                    || {
                        let _ = tx.send(JobEvent::gap());
                        true
                    },
                )
                .await;
            if !stopped {
                tracing::warn!("the job event feed lost its Redis Cluster connection");
            }
            hub_idle(&weak, &tx, true);
        });
        self.inner
            .hub_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok(Hub {
            tx: sender,
            shards: Some(channels),
        })
    }
}

impl RedisBroker {
    /// On shard channels, the hub (when this process has one) hears a
    /// queue as this process first meets it (`register_queue`, before its
    /// first enqueue there): a caller that subscribed and then enqueued (a
    /// long poll, an event stream) misses none of its jobs' events, even
    /// when the queue is new to the hub and its announcement is still on
    /// its way. (A hub started later reads every queue as it starts.) A
    /// subscription that fails is logged: the feed finds the queue at its
    /// next check ([`Discover`]) and then says events were missed.
    async fn hear_queue(&self, queue: &str) {
        let shards = self
            .inner
            .hub
            .lock()
            .ok()
            .and_then(|h| h.as_ref().and_then(|h| h.shards.clone()));
        if let Some(shards) = shards
            && let Err(e) = shards.ensure(&[shard_channel(queue)]).await
        {
            tracing::warn!(queue, error = %e, "subscribing to a queue's events");
        }
    }
}

/// The feed of job events of this process ([`RedisBroker::start_hub`]).
#[derive(Clone)]
struct Hub {
    tx: broadcast::Sender<JobEvent>,
    /// On shard channels: to subscribe the channels of queues the hub
    /// did not know when it started.
    shards: Option<ShardChannels>,
}

/// Sends the events of one message to the hub's receivers (none is fine:
/// nobody waits right now), with the final records that are `wants`ed.
fn hub_send(tx: &broadcast::Sender<JobEvent>, wants: &Mutex<RecordWants>, payload: &str) {
    if let Ok(m) = serde_json::from_str::<WireMessage>(payload) {
        let events = match m.rec {
            Some(_) => {
                let wants = wants.lock().unwrap_or_else(|e| e.into_inner());
                m.events(|id| wants.wants(id))
            }
            None => m.events(|_| false),
        };
        for ev in events {
            let _ = tx.send(ev);
        }
    }
}

/// Whether nobody listens to hub `tx` any more (or the broker is gone); if
/// so, or if `ending`, the broker forgets it (under the lock, so that no new
/// receiver joins a feed that is about to stop).
fn hub_idle(weak: &std::sync::Weak<Inner>, tx: &broadcast::Sender<JobEvent>, ending: bool) -> bool {
    match weak.upgrade() {
        None => true,
        Some(inner) => {
            let Ok(mut hub) = inner.hub.lock() else {
                return false;
            };
            if tx.receiver_count() > 0 && !ending {
                return false;
            }
            if hub.as_ref().is_some_and(|h| h.tx.same_channel(tx)) {
                *hub = None;
            }
            true
        }
    }
}

/// A message on `runner:q:<queue>`, published by the scripts, as the
/// event feed reads it (the wake-ups are [`WireSignal`]'s).
#[derive(Deserialize, Default)]
struct WireMessage {
    q: String,
    #[serde(default)]
    ev: Option<Vec<(String, String)>>,
    #[serde(default)]
    progress: Option<WireProgress>,
    /// A workflow's state or count changed.
    #[serde(default)]
    wf: Option<WireWorkflow>,
    /// The final records of the jobs that ended, by id (up to
    /// [`super::EVENT_RECORD_MAX`] bytes each).
    #[serde(default)]
    rec: Option<HashMap<String, String>>,
}

/// What a worker reads of the same messages (the events and the final
/// records are skipped, not decoded).
#[derive(Deserialize)]
struct WireSignal {
    q: String,
    /// The worker that leased jobs (`lease`: until when), or was pushed them.
    #[serde(default)]
    w: Option<String>,
    #[serde(default)]
    ready: Option<u64>,
    #[serde(default)]
    wake: Option<i64>,
    #[serde(default)]
    lease: Option<i64>,
    /// Jobs with a priority were made ready.
    #[serde(default)]
    prio: Option<u8>,
    /// Jobs leased by the enqueue to idle worker `w` ([`WirePush`]).
    #[serde(default)]
    push: Option<serde::de::IgnoredAny>,
}

/// The jobs of a push, read by the worker they were pushed to.
#[derive(Deserialize)]
struct WirePush {
    /// Lease member, record, lease member, record, ...
    push: Vec<String>,
}

#[derive(Deserialize)]
struct WireWorkflow {
    id: String,
    state: String,
    done: u64,
}

#[derive(Deserialize)]
struct WireProgress {
    id: String,
    #[serde(flatten)]
    progress: Progress,
}

impl WireMessage {
    /// The message's events, with the final records of the jobs that are
    /// `wanted` (the others' ends go without theirs).
    fn events(&self, wanted: impl Fn(&JobId) -> bool) -> Vec<JobEvent> {
        let mut out = Vec::new();
        // cjson encodes an empty list as `{}`, so an absent or odd `ev`
        // simply yields nothing.
        for (key, state) in self.ev.iter().flatten() {
            if let (Ok(id), Ok(state)) = (key.parse(), state.parse::<JobState>()) {
                let record = match &self.rec {
                    Some(recs) if state.is_final() && wanted(&id) => {
                        recs.get(key).map(|r| Arc::from(r.as_str()))
                    }
                    _ => None,
                };
                out.push(JobEvent {
                    id,
                    queue: self.q.clone(),
                    state,
                    progress: None,
                    record,
                });
            }
        }
        if let Some(w) = &self.wf
            && let (Ok(id), Some(state)) = (w.id.parse(), WfState::parse(&w.state))
        {
            out.push(super::workflow::event(id, state, w.done));
        }
        if let Some(p) = &self.progress
            && let Ok(id) = p.id.parse()
        {
            out.push(JobEvent {
                id,
                queue: self.q.clone(),
                state: JobState::Started,
                progress: Some(p.progress.clone()),
                record: None,
            });
        }
        out
    }
}

/// The jobs of a lease reply or a push: pairs of lease member and record.
/// A record this build cannot read (written by a newer one, or damaged)
/// is left out, logged, and left to its lease: it runs out, the job is
/// redelivered (a worker that reads it runs it) and, after its
/// redeliveries, dead-lettered with its record as it was. Failing the
/// whole reply instead threw away the jobs leased with it, and the next
/// fetch took the same batch again: the queue stalled.
fn deliveries(queue: &str, pairs: impl Iterator<Item = String>) -> BrokerResult<Vec<Delivery>> {
    let pairs: Vec<String> = pairs.collect();
    let mut out = Vec::with_capacity(pairs.len() / 2);
    for pair in pairs.chunks_exact(2) {
        let (member, rec) = (&pair[0], &pair[1]);
        let Some(parsed) = LeaseMember::parse(member) else {
            return Err(protocol("bad lease member"));
        };
        let Some(mut job) = readable(
            queue,
            &parsed.id,
            rec,
            "a leased job's record cannot be read by this build: left to its lease (redelivered, then dead-lettered)",
        ) else {
            continue;
        };
        parsed.show_started(&mut job);
        out.push(Delivery {
            job,
            // The server's clock, as every record's times and the rate
            // limiter's windows (not shifted by the offset estimate).
            leased_at: ms_to_time(parsed.leased_ms),
            lease: parsed.lease(queue, member.clone()),
        });
    }
    Ok(out)
}

/// `rec`, the record of job `id` of `queue`, as a job; `None`, logged
/// at error with `fate`, when this build cannot read it (written by a
/// newer build, or damaged). A reply or a listing leaves it out and shows
/// the others rather than failing whole.
fn readable(queue: &str, id: &dyn std::fmt::Display, rec: &str, fate: &str) -> Option<Job> {
    match Job::from_json(rec) {
        Ok(job) => Some(job),
        Err(e) => {
            tracing::error!(queue, job = %id, error = %e, "{fate}");
            None
        }
    }
}

/// Why a dead letter stays one: [`readable`]'s note for replays.
const UNREPLAYABLE: &str = "a dead letter's record cannot be read by this build: not replayed";

/// [`readable`]'s note for listings.
const UNLISTED: &str = "a job's record cannot be read by this build: left out of the listing";

/// [`readable`] for listings.
fn listed(queue: &str, id: &dyn std::fmt::Display, rec: &str) -> Option<Job> {
    readable(queue, id, rec, UNLISTED)
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => Vec::new(),
    }
}

fn protocol(what: &str) -> BrokerError {
    BrokerError::Protocol(what.to_string())
}

fn ttl_ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, jobs: Vec<Job>) -> BrokerResult<Vec<Enqueued>> {
        let mut out = Vec::with_capacity(jobs.len());
        // Group by queue, keeping the caller's order within each queue.
        let mut queues: Vec<String> = Vec::new();
        for j in &jobs {
            if !queues.contains(&j.queue) {
                queues.push(j.queue.clone());
            }
        }
        let mut results: Vec<Option<Enqueued>> = vec![None; jobs.len()];
        for q in &queues {
            self.register_queue(q).await?;
            let idx: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].queue == *q).collect();
            for chunk in idx.chunks(ENQUEUE_CHUNK) {
                self.enqueue_chunk(q, &jobs, chunk, &mut results).await?;
            }
        }
        for r in results {
            out.push(r.ok_or_else(|| protocol("a job of the batch got no reply"))?);
        }
        Ok(out)
    }

    async fn get(&self, id: JobId) -> BrokerResult<Option<Job>> {
        // A read is safe to repeat: the first command after Redis restarted
        // finds the old connection broken and the manager reconnects.
        match self.get_once(id).await {
            Err(BrokerError::Redis(e)) if e.is_connection_dropped() || e.is_io_error() => {
                self.get_once(id).await
            }
            other => other,
        }
    }

    fn want_record(&self, id: Option<JobId>) -> RecordWant {
        RecordWants::want(&self.inner.record_wants, id)
    }

    async fn subscribe(&self) -> BrokerResult<broadcast::Receiver<JobEvent>> {
        // The receiver joins under the lock: `hub_idle` decides under it
        // that nobody listens, so it cannot stop a hub between our finding
        // it and joining it (the receiver would then hear nothing, ever).
        let existing = self
            .inner
            .hub
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|hub| (hub.clone(), hub.tx.subscribe())));
        let (hub, rx, started) = match existing {
            Some((hub, rx)) => (hub, rx, false),
            None => {
                let hub = self.start_hub().await?;
                let rx = match self.inner.hub.lock() {
                    Ok(mut slot) => {
                        // Two callers may race to start a hub; the loser's
                        // hub keeps serving its own receivers and stops
                        // when they are gone.
                        if slot.is_none() {
                            *slot = Some(hub.clone());
                        }
                        hub.tx.subscribe()
                    }
                    Err(_) => hub.tx.subscribe(),
                };
                (hub, rx, true)
            }
        };
        // On shard channels, every queue that exists now is heard before
        // the receiver is handed out: a caller that waits for a job of a
        // queue made a moment ago (before its announcement reached the
        // hub) misses none of its events. A hub started by this call read
        // the queues as it started.
        if let (Some(shards), false) = (&hub.shards, started) {
            let queues: Vec<String> = self.conn().smembers(QUEUES_KEY).await?;
            shards.ensure(&shard_channels(&queues)).await?;
        }
        Ok(rx)
    }

    async fn revoke(&self, id: JobId, terminate: bool) -> BrokerResult<RevokeOutcome> {
        for _ in 0..10 {
            let Some((queue, rec)) = self.find_record(id).await? else {
                return Ok(RevokeOutcome::NotFound);
            };
            let mut job = Job::from_json(&rec)?;
            if job.state.is_final() {
                return Ok(RevokeOutcome::AlreadyFinal(job.state));
            }
            job = job.revoked("revoked before it ran", Utc::now());
            let p = prefix(&queue);
            let mut inv = self.inner.scripts.revoke.prepare_invoke();
            queue_keys(&mut inv, &p);
            let reply: String = inv
                .key(final_key(&p, id))
                .arg(&p)
                .arg(id.to_string())
                .arg(job.to_json())
                .arg(job.result_ttl_ms.max(1))
                .arg(if terminate { "1" } else { "0" })
                .arg(self.chan(&queue))
                .arg(&rec)
                .arg(&queue)
                .invoke_async(&mut self.conn())
                .await?;
            if matches!(reply.as_str(), "TERMINATING" | "RUNNING" | "REVOKED") {
                // Its record is kept a result TTL from now: so is its entry.
                let ttl = job.result_ttl_ms.saturating_add(INDEX_RETAIN_MS);
                if let Err(e) = self.index(&[(id, queue.as_str(), ttl)]).await {
                    tracing::warn!(queue, "indexing a revoked job: {e}");
                }
            }
            return Ok(match reply.as_str() {
                "NOTFOUND" => RevokeOutcome::NotFound,
                "TERMINATING" => RevokeOutcome::Terminating,
                "RUNNING" => RevokeOutcome::WillNotRetry,
                "REVOKED" => RevokeOutcome::Revoked,
                // The record changed under us (a retry was stored): again.
                "CHANGED" => continue,
                s if s.starts_with("FINAL:") => {
                    RevokeOutcome::AlreadyFinal(s[6..].parse().map_err(BrokerError::Job)?)
                }
                other => return Err(protocol(&format!("revoke replied {other:?}"))),
            });
        }
        Err(protocol("revoke: the job kept changing"))
    }

    async fn settle(&self, mut req: SettleRequest) -> BrokerResult<SettleReply> {
        self.migrate_layout(&req.queue).await?;
        // A script takes at most 8,000 values at once (`unpack`), two per
        // job it leases or ends: one call leases and ends at most
        // `SETTLE_MAX` jobs. Ends beyond that are settled first, in calls
        // that lease and check nothing; leases beyond it, after, in calls
        // made while the queue gives all they ask.
        let want = req.fetch;
        req.fetch = want.min(SETTLE_MAX);
        let mut early = SettleReply::default();
        while req.completions.len() > SETTLE_MAX {
            let head = SettleRequest {
                completions: Arc::from(&req.completions[..SETTLE_MAX]),
                fetch: 0,
                due_check: false,
                prioritized: false,
                idle: 0,
                // (A worker registered as idle stays so.)
                registered: false,
                ..req.clone()
            };
            let (r, _) = self.settle_once(&head).await?;
            early.stale.extend(r.stale);
            early.deferred_until = earlier(early.deferred_until, r.deferred_until);
            req.completions = Arc::from(&req.completions[SETTLE_MAX..]);
        }
        let (mut out, undeclared) = self.settle_once(&req).await?;
        out.stale.splice(0..0, early.stale);
        out.deferred_until = earlier(out.deferred_until, early.deferred_until);
        let mut asked = req.fetch;
        let more = SettleRequest {
            completions: Arc::from(Vec::new()),
            due_check: false,
            ..req
        };
        if !undeclared.is_empty() {
            // Leased jobs needed rate-limit logs the call did not declare:
            // they were left first in line. Declared from now on, and
            // leased at once (the rest of the reply stands).
            {
                let mut known = self
                    .inner
                    .limit_keys
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let keys = known.entry(more.queue.clone()).or_default();
                for k in undeclared {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            let again = SettleRequest {
                fetch: more.fetch.saturating_sub(out.deliveries.len()),
                registered: out.registered(),
                ..more.clone()
            };
            let (r, _) = self.settle_once(&again).await?;
            merge_leases(&mut out, r);
        }
        while out.popped >= asked && asked < want && !out.push_in_flight {
            let fetch = (want - asked).min(SETTLE_MAX);
            let next = SettleRequest {
                fetch,
                registered: out.registered(),
                ..more.clone()
            };
            let (r, _) = self.settle_once(&next).await?;
            asked += fetch;
            merge_leases(&mut out, r);
        }
        Ok(out)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> BrokerResult<Extended> {
        let mut out = Extended::default();
        let mut queues: Vec<&str> = leases.iter().map(|l| l.queue.as_str()).collect();
        queues.sort();
        queues.dedup();
        for q in queues {
            let p = prefix(q);
            let of_q: Vec<&Lease> = leases.iter().filter(|l| l.queue == q).collect();
            // At most `SETTLE_MAX` leases a call: the script unpacks two
            // values a lease, and Lua's `unpack` stops at about 8,000.
            for chunk in of_q.chunks(SETTLE_MAX) {
                let mut inv = self.inner.scripts.extend.prepare_invoke();
                inv.key(format!("{p}leases"))
                    .key(format!("{p}revoked"))
                    .key(format!("{p}terminate"))
                    .arg(ttl_ms(lease));
                for l in chunk {
                    inv.arg(&l.member);
                }
                let (gone, revoked): (Vec<String>, Vec<String>) =
                    inv.invoke_async(&mut self.conn()).await?;
                out.lost.extend(
                    gone.iter()
                        .filter_map(|m| LeaseMember::parse(m))
                        .map(|m| m.id),
                );
                for pair in revoked.chunks(2) {
                    if let [id, terminate] = pair
                        && let Ok(id) = id.parse()
                    {
                        out.revoked.push((id, terminate == "1"));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn progress(&self, lease: &Lease, progress: &Progress) -> BrokerResult<()> {
        let p = prefix(&lease.queue);
        let json = serde_json::to_string(progress).unwrap_or_default();
        let mut wire = serde_json::to_value(progress).unwrap_or_default();
        wire["id"] = serde_json::Value::String(lease.id.to_string());
        let msg = serde_json::json!({"q": lease.queue, "progress": wire});
        let mut conn = self.conn();
        let publish = if self.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        redis::pipe()
            .hset(format!("{p}progress"), lease.id.to_string(), json)
            .ignore()
            .cmd(publish)
            .arg(self.chan(&lease.queue))
            .arg(msg.to_string())
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn signals(
        &self,
        worker: &str,
        queues: &[String],
    ) -> BrokerResult<mpsc::UnboundedReceiver<Signal>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.inner.endpoint.clone();
        let queues = queues.to_vec();
        // Fail early when Redis cannot be reached at all.
        let first = connect_signals(&client, &queues).await?;
        let clock = self.inner.clock.clone();
        let live = self.inner.liveness;
        let me = worker.to_string();
        tokio::spawn(signal_loop(client, me, queues, tx, first, clock, live));
        Ok(rx)
    }

    /// Stores the worker's heartbeat (a key with a TTL). Its id joins
    /// `runner:workers` on its first heartbeat and every tenth after (so a
    /// worker dropped from the set while it was paused comes back), which
    /// keeps an idle worker at one command per heartbeat.
    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()> {
        let json = serde_json::to_string(worker).unwrap_or_default();
        let beats = {
            let mut seen = self
                .inner
                .heartbeats
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let n = seen.entry(worker.id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let mut pipe = redis::pipe();
        pipe.set_ex(worker_key(&worker.id), json, ttl.as_secs().max(1))
            .ignore();
        if beats % 10 == 1 {
            pipe.sadd(WORKERS_KEY, &worker.id).ignore();
        }
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn worker_gone(&self, worker_id: &str) -> BrokerResult<()> {
        let _: () = redis::pipe()
            .del(worker_key(worker_id))
            .ignore()
            .srem(WORKERS_KEY, worker_id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The workers of `runner:workers` whose heartbeat is alive (no scan
    /// of the keyspace); ids whose heartbeat expired leave the set.
    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>> {
        let mut conn = self.conn();
        let ids: Vec<String> = conn.smembers(WORKERS_KEY).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|i| worker_key(i)).collect();
        let vals: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut gone = Vec::new();
        let mut out = Vec::new();
        for (id, v) in ids.iter().zip(vals) {
            match v.and_then(|v| serde_json::from_str::<WorkerInfo>(&v).ok()) {
                Some(w) => out.push(w),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: () = conn.srem(WORKERS_KEY, gone).await?;
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn register_queue(&self, queue: &str) -> BrokerResult<()> {
        if self
            .inner
            .known_queues
            .lock()
            .map(|k| k.contains(queue))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let added: u64 = self.conn().sadd(QUEUES_KEY, queue).await?;
        if added > 0 {
            // A queue this build creates is in its layout from the start:
            // nothing to move (`migrate_layout`), however long it gets
            // before a worker comes. One that existed is left to that.
            let _: () = redis::cmd("SET")
                .arg(format!("{}layout", prefix(queue)))
                .arg(LAYOUT)
                .arg("NX")
                .query_async(&mut self.conn())
                .await?;
        }
        // Event feeds on shard channels subscribe queue by queue: a new
        // one is announced (classic, heard cluster-wide).
        if added > 0 && self.sharded() {
            let _: u64 = self.conn().publish(NEW_QUEUE_CHANNEL, queue).await?;
        }
        self.hear_queue(queue).await;
        if let Ok(mut k) = self.inner.known_queues.lock() {
            k.insert(queue.to_string());
        }
        Ok(())
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueStats>> {
        let mut conn = self.conn();
        let mut names: Vec<String> = conn.smembers(QUEUES_KEY).await?;
        names.sort();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in &names {
            let p = prefix(q);
            pipe.llen(format!("{p}ready"))
                .zcard(format!("{p}prio"))
                .zcard(format!("{p}delayed"))
                .zcard(format!("{p}leases"))
                .zcard(format!("{p}dead"));
        }
        let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
        let at = |i: usize| counts.get(i).copied().unwrap_or(0);
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(i, name)| QueueStats {
                name,
                ready: at(5 * i) + at(5 * i + 1),
                delayed: at(5 * i + 2),
                in_flight: at(5 * i + 3),
                dead: at(5 * i + 4),
            })
            .collect())
    }

    /// One `HGETALL` of each queue's `hist` hash, in one round trip.
    async fn history(&self, queues: &[String]) -> BrokerResult<Vec<Minutes>> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in queues {
            pipe.hgetall(format!("{}hist", prefix(q)));
        }
        let all: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(all.into_iter().map(Minutes::from_fields).collect())
    }

    /// One `ZCOUNT` of each limit's log (the scripts' `rl:` sets, scored
    /// by the server's ms; this process's clock picks the window).
    async fn rate_usage(&self, queue: &str, limits: &[RateLimit]) -> BrokerResult<Vec<u64>> {
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now().timestamp_millis();
        let p = prefix(queue);
        let mut pipe = redis::pipe();
        for r in limits {
            pipe.zcount(
                format!("{p}rl:{}", r.key),
                format!("({}", now - r.period_ms as i64),
                "+inf",
            );
        }
        Ok(pipe.query_async(&mut self.conn()).await?)
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> BrokerResult<Vec<Job>> {
        Ok(self.dead_page(queue, 0, limit, UNLISTED, None).await?.2)
    }

    /// Replays the dead letters `ids` (reading only their records), or all
    /// of them, a page at a time (memory does not grow with the dead set).
    /// A record this build cannot read stays a dead letter (logged); the
    /// others are replayed.
    async fn replay(&self, queue: &str, ids: &[JobId]) -> BrokerResult<Vec<JobId>> {
        if !ids.is_empty() {
            let ids: Vec<String> = ids.iter().map(JobId::to_string).collect();
            let recs = self.records(queue, &ids).await?;
            let chosen: Vec<Job> = ids
                .iter()
                .zip(recs)
                .filter_map(|(id, rec)| readable(queue, id, &rec?, UNREPLAYABLE))
                .collect();
            // The script replays only those still in the dead set.
            return self.replay_jobs(queue, &chosen).await;
        }
        let mut replayed = Vec::new();
        // The entries left in place: records this build cannot read. They
        // are older than the rest, so they stay at the set's start and the
        // next page begins after them. (One of them expiring meanwhile
        // shifts the set by one: a readable letter is then left for the
        // next replay, not lost.)
        let mut kept = 0;
        // Only the letters dead when the call began: one replayed that
        // fails for good again goes back to the set's end, after the newest
        // then, and would be replayed again by a later page, as long as
        // workers failed jobs as fast as pages were read.
        let newest: Vec<(String, f64)> = self
            .conn()
            .zrange_withscores(format!("{}dead", prefix(queue)), -1, -1)
            .await?;
        let Some((_, until)) = newest.into_iter().next() else {
            return Ok(replayed);
        };
        loop {
            let (held, unreadable, page) = self
                .dead_page(queue, kept, ENQUEUE_CHUNK, UNREPLAYABLE, Some(until))
                .await?;
            if held == 0 {
                return Ok(replayed);
            }
            // A readable letter the script does not replay was taken out of
            // the dead set by someone else (a replay at the same time).
            replayed.extend(self.replay_jobs(queue, &page).await?);
            kept += unreadable;
        }
    }

    /// A page at a time: the delayed set by rank from its start, then the
    /// ready list from its tail (see [`RedisBroker::purge_page`] for why
    /// nothing is missed while workers and producers go on).
    async fn purge(&self, queue: &str, filter: &PurgeFilter) -> BrokerResult<Vec<JobId>> {
        let mut out = Vec::new();
        if filter.delayed {
            self.purge_place(queue, filter, 'd', &mut out).await?;
        }
        if filter.ready {
            self.purge_place(queue, filter, 'p', &mut out).await?;
            self.purge_place(queue, filter, 'r', &mut out).await?;
        }
        // A page read again (entries shifted under it) lists a job once.
        let mut seen = HashSet::new();
        out.retain(|id| seen.insert(*id));
        Ok(out)
    }

    async fn scheduled(
        &self,
        queue: &str,
        limit: usize,
    ) -> BrokerResult<Vec<(DateTime<Utc>, Job)>> {
        let due: Vec<(String, f64)> = self
            .conn()
            .zrange_withscores(
                format!("{}delayed", prefix(queue)),
                0,
                limit.max(1) as isize - 1,
            )
            .await?;
        let ids: Vec<&str> = due.iter().map(|(m, _)| member_id(m)).collect();
        let mut out = Vec::with_capacity(due.len());
        for ((member, at), rec) in due.iter().zip(self.records(queue, &ids).await?) {
            let Some(job) = rec.and_then(|r| listed(queue, &member_id(member), &r)) else {
                continue;
            };
            if !job.state.is_final() {
                out.push((self.inner.clock.local(*at as i64), job));
            }
        }
        Ok(out)
    }

    async fn inspect(&self, timeout: Duration) -> BrokerResult<Vec<WorkerSnapshot>> {
        let reply = uuid::Uuid::new_v4().to_string();
        let mut ps = self.inner.endpoint.pubsub().await?;
        ps.subscribe(reply_channel(&reply)).await?;
        // On one server, every worker hears the control channel on one
        // connection: the number of receivers is the number of answers to
        // wait for. On a cluster, PUBLISH counts only the receivers on the
        // node it ran on (the others hear it relayed): the workers whose
        // heartbeat is alive are the number to wait for there.
        let published: usize = self
            .conn()
            .publish(
                CONTROL_CHANNEL,
                serde_json::json!({ "inspect": reply }).to_string(),
            )
            .await?;
        let asked = if self.inner.conn.is_cluster() {
            self.workers().await?.len().max(published)
        } else {
            published
        };
        let answers = std::pin::pin!(ps.on_message().filter_map(|msg| async move {
            let text: String = msg.get_payload().unwrap_or_default();
            serde_json::from_str(&text)
                .inspect_err(|e| tracing::warn!(error = %e, "an unreadable inspect answer"))
                .ok()
        }));
        Ok(gather_answers(answers, asked, timeout).await)
    }

    async fn answer(&self, reply: &str, snapshot: &WorkerSnapshot) -> BrokerResult<()> {
        if !valid_reply(reply) {
            return Err(protocol("not an inspect reply id"));
        }
        let text = serde_json::to_string(snapshot).map_err(|e| protocol(&e.to_string()))?;
        let _: usize = self.conn().publish(reply_channel(reply), text).await?;
        Ok(())
    }

    async fn list(&self, query: &JobQuery) -> BrokerResult<JobPage> {
        let mut conn = self.conn();
        let queues: Vec<String> = match query.queues.as_slice() {
            [_, ..] => query.queues.clone(),
            [] => {
                let mut names: Vec<String> = conn.smembers(QUEUES_KEY).await?;
                names.sort();
                names
            }
        };
        if queues.is_empty() {
            return Ok(JobPage::default());
        }
        let index = match query.indexed_state() {
            Some(s) => format!("jobs:{s}"),
            None => "jobs".to_string(),
        };
        let (upper, lower) = query.id_range();
        let max = upper.map_or_else(|| "+".to_string(), |b| format!("({b}"));
        let min = lower.map_or_else(|| "-".to_string(), |b| format!("[{b}"));
        let mut pipe = redis::pipe();
        for q in &queues {
            pipe.cmd("ZRANGE")
                .arg(format!("{}{index}", prefix(q)))
                .arg(&max)
                .arg(&min)
                .arg("BYLEX")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(query.window());
        }
        let ids: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        let windows = queues
            .into_iter()
            .zip(ids)
            .map(|(queue, ids)| Window {
                queue,
                ids: ids.iter().filter_map(|s| parse_cursor(s)).collect(),
            })
            .collect();
        let mut walk = Walk::new(query, windows);
        let now = self.inner.clock.now();
        loop {
            let chunk = walk.next_chunk().to_vec();
            if chunk.is_empty() {
                break;
            }
            let jobs = self.shown(&chunk, now).await?;
            walk.feed(jobs);
        }
        Ok(walk.page())
    }

    async fn wf_create(&self, id: JobId, spec: &str, total: u64, made: i64) -> BrokerResult<bool> {
        let created: i64 = self
            .inner
            .scripts
            .wf_create
            .key(wf_key(id))
            .arg(spec)
            .arg(total)
            .arg(ttl_ms(RUNNING_TTL))
            .arg(made)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(created == 1)
    }

    async fn wf_read(&self, id: JobId) -> BrokerResult<Option<WfStored>> {
        let fields: HashMap<String, String> = self.conn().hgetall(wf_key(id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(WfStored::from_fields(fields))
    }

    async fn wf_spec(&self, id: JobId) -> BrokerResult<Option<String>> {
        Ok(self.conn().hget(wf_key(id), "spec").await?)
    }

    async fn wf_mark(
        &self,
        id: JobId,
        made: i64,
        marks: &[WfMark],
        ttl: Duration,
    ) -> BrokerResult<Option<WfMarked>> {
        let mut inv = self.inner.scripts.wf_mark.prepare_invoke();
        inv.key(wf_key(id))
            .arg(WF_CHANNEL)
            .arg(id.to_string())
            .arg(ttl_ms(ttl))
            .arg(marks.len());
        for m in marks {
            inv.arg(m.kind.code())
                .arg(&m.field)
                .arg(&m.value)
                .arg(m.counter.as_deref().unwrap_or(""));
        }
        inv.arg(made);
        let reply: Value = inv.invoke_async(&mut self.conn()).await?;
        if matches!(reply, Value::Nil) {
            return Ok(None);
        }
        let parts = as_array(reply);
        let state = parts
            .first()
            .and_then(as_string)
            .and_then(|s| WfState::parse(&s))
            .ok_or_else(|| protocol("wf_mark: no state"))?;
        let num = |v: &Value| {
            as_string(v)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let per_mark = parts.get(3..).unwrap_or_default();
        if per_mark.len() != marks.len() * 2 {
            return Err(protocol("wf_mark: not two values per mark"));
        }
        Ok(Some(WfMarked {
            state,
            done: parts.get(1).map_or(0, num),
            failed: parts.get(2).and_then(as_string).filter(|s| !s.is_empty()),
            counts: per_mark.iter().step_by(2).map(num).collect(),
            fresh: per_mark
                .iter()
                .skip(1)
                .step_by(2)
                .map(|v| num(v) == 1)
                .collect(),
        }))
    }

    async fn wf_fields(&self, id: JobId, fields: &[String]) -> BrokerResult<Vec<Option<String>>> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        Ok(redis::cmd("HMGET")
            .arg(wf_key(id))
            .arg(fields)
            .query_async(&mut self.conn())
            .await?)
    }

    async fn wf_launched(
        &self,
        id: JobId,
        launched: &[(String, JobId)],
    ) -> BrokerResult<Option<WfState>> {
        // In calls of a bounded size: a script hands Redis at most 8,000
        // values at once (`unpack`), and a group may launch 10,000 jobs.
        // Each call reads the state again: the last says how it is after
        // all of them (a record gone stops them).
        let mut chunks = launched.chunks(ENQUEUE_CHUNK);
        let none: &[(String, JobId)] = &[];
        let first = chunks.next().unwrap_or(none);
        let mut state = None;
        for chunk in std::iter::once(first).chain(chunks) {
            let mut inv = self.inner.scripts.wf_launched.prepare_invoke();
            inv.key(wf_key(id));
            for (path, job) in chunk {
                inv.arg(format!("l:{path}")).arg(job.to_string());
            }
            state = inv.invoke_async::<Option<String>>(&mut self.conn()).await?;
            if state.is_none() {
                break;
            }
        }
        Ok(state.and_then(|s| WfState::parse(&s)))
    }

    async fn wf_end(&self, id: JobId, to: WfState, ttl: Duration) -> BrokerResult<Option<WfState>> {
        let reply: Option<String> = self
            .inner
            .scripts
            .wf_end
            .key(wf_key(id))
            .arg(WF_CHANNEL)
            .arg(id.to_string())
            .arg(to.as_str())
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(reply.and_then(|s| WfState::parse(&s)))
    }

    async fn wf_index(&self, members: &[(JobId, String)], ttl: Duration) -> BrokerResult<()> {
        let ttl = ttl_ms(ttl).saturating_add(INDEX_RETAIN_MS);
        let entries: Vec<(JobId, &str, u64)> = members
            .iter()
            .map(|(id, q)| (*id, q.as_str(), ttl))
            .collect();
        // A workflow may have 10,000 steps: one call per thousand.
        for chunk in entries.chunks(ENQUEUE_CHUNK) {
            self.index(chunk).await?;
        }
        Ok(())
    }

    async fn outbox_done(&self, queue: &str, ids: &[JobId]) -> BrokerResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let _: i64 = self
            .conn()
            .zrem(format!("{}wfout", prefix(queue)), ids)
            .await?;
        Ok(())
    }

    async fn outbox_later(&self, queue: &str, ids: &[JobId], after: Duration) -> BrokerResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // Scored by the server's clock (the one the due check reads).
        let shift = super::workflow::later_shift(after);
        for chunk in ids.chunks(ENQUEUE_CHUNK) {
            let mut call = self
                .inner
                .scripts
                .outbox_later
                .key(format!("{}wfout", prefix(queue)));
            call.arg(shift.as_millis() as u64);
            for id in chunk {
                call.arg(id.to_string());
            }
            let _: i64 = call.invoke_async(&mut self.conn()).await?;
        }
        Ok(())
    }

    async fn outbox(
        &self,
        queue: &str,
        min_age: Duration,
        limit: usize,
    ) -> BrokerResult<Vec<JobId>> {
        let ids: Vec<String> = self
            .inner
            .scripts
            .outbox
            .key(format!("{}wfout", prefix(queue)))
            .arg(min_age.as_millis() as u64)
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(ids.iter().filter_map(|s| s.parse().ok()).collect())
    }

    async fn running(&self, queue: &str) -> BrokerResult<Vec<Job>> {
        let leased: Vec<(String, String)> = self
            .conn()
            .hgetall(format!("{}leased", prefix(queue)))
            .await?;
        let ids: Vec<&str> = leased.iter().map(|(id, _)| id.as_str()).collect();
        let mut out = Vec::new();
        for ((id, member), rec) in leased.iter().zip(self.records(queue, &ids).await?) {
            let (Some(rec), Some(member)) = (rec, LeaseMember::parse(member)) else {
                continue;
            };
            let Some(mut job) = listed(queue, id, &rec) else {
                continue;
            };
            if !job.state.is_final() {
                member.show_started(&mut job);
                out.push(job);
            }
        }
        out.sort_by_key(|j| j.started_at);
        Ok(out)
    }
}

impl RedisBroker {
    /// The jobs of `entries` as a lookup shows them at `now` (STARTED
    /// while leased, EXPIRED past their expiry), in order: one MGET and one
    /// HMGET of `live` per queue, and one HMGET of its leases for the jobs
    /// not yet final.
    async fn shown(
        &self,
        entries: &[(String, JobId)],
        now: DateTime<Utc>,
    ) -> BrokerResult<Vec<Option<Job>>> {
        let mut out: Vec<Option<Job>> = vec![None; entries.len()];
        let mut queues: Vec<&str> = entries.iter().map(|(q, _)| q.as_str()).collect();
        queues.sort();
        queues.dedup();
        for queue in queues {
            let at: Vec<usize> = (0..entries.len())
                .filter(|&i| entries[i].0 == queue)
                .collect();
            let ids: Vec<String> = at.iter().map(|&i| entries[i].1.to_string()).collect();
            let mut open = Vec::new();
            for ((&i, id), rec) in at.iter().zip(&ids).zip(self.records(queue, &ids).await?) {
                let Some(job) = rec.and_then(|r| listed(queue, id, &r)) else {
                    continue;
                };
                if !job.state.is_final() {
                    open.push(i);
                }
                out[i] = Some(job);
            }
            if open.is_empty() {
                continue;
            }
            let members: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(format!("{}leased", prefix(queue)))
                .arg(
                    open.iter()
                        .map(|&i| entries[i].1.to_string())
                        .collect::<Vec<_>>(),
                )
                .query_async(&mut self.conn())
                .await?;
            for (&i, member) in open.iter().zip(members) {
                let Some(job) = out[i].as_mut() else { continue };
                show_open(job, member.as_deref().and_then(LeaseMember::parse), now);
            }
        }
        Ok(out)
    }
}

/// The job id of a `ready` or `delayed` member (`<id>|<redeliveries>`).
fn member_id(member: &str) -> &str {
    member.split('|').next().unwrap_or(member)
}

impl RedisBroker {
    /// The history minute of `queue` the scripts last reported ('' none).
    fn hist_minute(&self, queue: &str) -> String {
        self.inner
            .hist_minutes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(queue)
            .cloned()
            .unwrap_or_default()
    }

    /// Keeps the history minute a script reported for `queue` (`reply`:
    /// '' when the call changed nothing, which says nothing new).
    fn saw_hist_minute(&self, queue: &str, reply: Option<&Value>) {
        let Some(m) = reply.and_then(as_string).filter(|m| !m.is_empty()) else {
            return;
        };
        let mut known = self
            .inner
            .hist_minutes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match known.get_mut(queue) {
            Some(k) => *k = m,
            None => {
                known.insert(queue.to_string(), m);
            }
        }
    }

    /// One settle call (see [`Broker::settle`]), and the rate-limit keys of
    /// jobs it could not lease because their logs were not declared.
    async fn settle_once(&self, req: &SettleRequest) -> BrokerResult<(SettleReply, Vec<String>)> {
        let q = &req.queue;
        let p = prefix(q);
        let clock = &self.inner.clock;
        let sent = clock.local_ms();
        let mut inv = self.inner.scripts.settle.prepare_invoke();
        queue_keys(&mut inv, &p);
        for c in req.completions.iter() {
            if !matches!(c.settlement, Settlement::Release { .. }) {
                inv.key(final_key(&p, c.lease.id));
            }
        }
        if let Some(keys) = self
            .inner
            .limit_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(q)
        {
            for k in keys {
                inv.key(format!("{p}rl:{k}")).key(format!("{p}rl:{k}:tail"));
            }
        }
        inv.arg(&p)
            .arg(self.chan(q))
            .arg(q)
            .arg(ttl_ms(req.lease))
            .arg(&req.worker)
            .arg(req.fetch)
            .arg(if req.due_check { "1" } else { "0" })
            .arg(req.completions.len())
            .arg(if req.holds_leases { "1" } else { "0" })
            .arg(if req.prioritized { "1" } else { "0" })
            .arg(req.idle)
            .arg(if req.registered { "1" } else { "0" });
        for c in req.completions.iter() {
            push_completion(&mut inv, c, sent);
        }
        inv.arg(self.hist_minute(q));
        let reindex = reindexed(&req.completions, q, sent);
        let reply: Value = if reindex.is_empty() {
            inv.invoke_async(&mut self.conn()).await?
        } else {
            let mut conn = self.conn();
            let (indexed, reply) =
                tokio::join!(self.index(&reindex), inv.invoke_async::<Value>(&mut conn));
            if let Err(e) = indexed {
                tracing::warn!(queue = %q, "indexing jobs: {e}");
            }
            reply?
        };
        let mut parts = as_array(reply).into_iter();
        let leased = as_array(parts.next().ok_or_else(|| protocol("settle: no leases"))?);
        let stale = as_array(parts.next().unwrap_or(Value::Nil));
        let next_due = parts.next().and_then(|v| as_string(&v)).unwrap_or_default();
        let deferred = parts.next().and_then(|v| as_string(&v)).unwrap_or_default();
        let popped = match parts.next() {
            Some(Value::Int(n)) => n.max(0) as usize,
            _ => 0,
        };
        if let Some(Value::Int(server_now)) = parts.next() {
            clock.observe(server_now, sent);
        }
        let reclaimed = match parts.next() {
            Some(Value::Int(n)) => n.max(0) as usize,
            _ => 0,
        };
        let prioritized_left = parts.next().and_then(|v| as_string(&v)).as_deref() == Some("1");
        let outbox = as_array(parts.next().unwrap_or(Value::Nil))
            .iter()
            .filter_map(as_string)
            .filter_map(|s| s.parse().ok())
            .collect();
        let offered = parts
            .next()
            .and_then(|v| as_string(&v))
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
        let push_in_flight = parts.next().and_then(|v| as_string(&v)).as_deref() == Some("1");
        let undeclared: Vec<String> = as_array(parts.next().unwrap_or(Value::Nil))
            .iter()
            .filter_map(as_string)
            .collect();
        self.saw_hist_minute(q, parts.next().as_ref());
        let mut out = SettleReply {
            popped,
            reclaimed,
            prioritized_left,
            outbox,
            offered,
            push_in_flight,
            deliveries: deliveries(q, leased.iter().filter_map(as_string))?,
            ..SettleReply::default()
        };
        out.stale = stale
            .iter()
            .filter_map(as_string)
            .filter_map(|s| s.parse().ok())
            .collect();
        out.next_due = next_due
            .parse::<f64>()
            .ok()
            .map(|ms| clock.local(ms as i64));
        out.deferred_until = deferred
            .parse::<f64>()
            .ok()
            .map(|ms| clock.local(ms as i64));
        Ok((out, undeclared))
    }

    /// Moves queue `queue` to this build's [`LAYOUT`], once per process
    /// (a key, `layout`, says it is done). Layout 1 kept every record in
    /// `job:<id>`; layout 2 keeps those of waiting and running jobs in
    /// `live` (a lease cannot declare the records it pops), and a lease
    /// drops an entry whose record is not there. So every queue entry's
    /// record is moved before this process leases: the entries are read a
    /// page at a time and moved by `lua/migrate.lua`, which declares them.
    /// A process of an earlier build must not run beside it (see
    /// `docs/scaling.md`, "Upgrading").
    async fn migrate_layout(&self, queue: &str) -> BrokerResult<()> {
        let done = self
            .inner
            .laid_out
            .lock()
            .map(|l| l.contains(queue))
            .unwrap_or(false);
        if done {
            return Ok(());
        }
        let p = prefix(queue);
        let mut conn = self.conn();
        let layout: Option<String> = conn.get(format!("{p}layout")).await?;
        if layout.as_deref() != Some(LAYOUT) {
            let mut moved = 0u64;
            for (key, list) in [
                ("ready", true),
                ("prio", false),
                ("delayed", false),
                ("leases", false),
            ] {
                let key = format!("{p}{key}");
                let mut from = 0isize;
                loop {
                    let to = from + PURGE_PAGE as isize - 1;
                    let members: Vec<String> = if list {
                        conn.lrange(&key, from, to).await?
                    } else {
                        conn.zrange(&key, from, to).await?
                    };
                    if members.is_empty() {
                        break;
                    }
                    let mut inv = self.inner.scripts.migrate.prepare_invoke();
                    inv.key(live_key(&p));
                    for m in &members {
                        let id = member_id(m);
                        inv.key(final_key(&p, id)).arg(id);
                    }
                    let n: u64 = inv.invoke_async(&mut conn).await?;
                    moved += n;
                    from += members.len() as isize;
                }
            }
            let _: () = conn.set(format!("{p}layout"), LAYOUT).await?;
            if moved > 0 {
                tracing::info!(queue, moved, "queue moved to layout {LAYOUT}");
            }
        }
        if let Ok(mut l) = self.inner.laid_out.lock() {
            l.insert(queue.to_string());
        }
        Ok(())
    }

    /// Stores jobs `chunk` (indexes into `jobs`) of queue `q` with one
    /// enqueue call, and indexes them beside it. A job whose idempotency
    /// key names an earlier job that has ended is sent again, declaring
    /// that job's record key (a call cannot read a key it did not
    /// declare, and the earlier id is only known once the key is read).
    async fn enqueue_chunk(
        &self,
        q: &str,
        jobs: &[Job],
        chunk: &[usize],
        results: &mut [Option<Enqueued>],
    ) -> BrokerResult<()> {
        let p = prefix(q);
        let now = self.inner.clock.now();
        // A delay: the script adds it to the server's clock.
        let delay_of = |j: &Job| {
            j.eta
                .filter(|e| *e > now)
                .map(|e| (e - now).num_milliseconds().max(1))
                .unwrap_or(0)
        };
        // A job that expires unrun is kept a result-TTL past its expiry,
        // at most the longest TTL the script takes (each may be that long).
        // A workflow's step is kept until a worker takes it and ends it
        // EXPIRED: that end is what advances (fails) its workflow.
        let ttl_of = |j: &Job| {
            j.expires
                .filter(|_| j.workflow.is_none())
                .map(|e| {
                    ((e - now).num_milliseconds().max(1) as u64)
                        .saturating_add(j.result_ttl_ms)
                        .min(MAX_TTL_MS)
                })
                .unwrap_or(0)
        };
        // The index outlives the record: a day past the due time (or the
        // expiry) and the result's TTL. A workflow's steps were indexed
        // when it started (`wf_index`).
        let entries: Vec<(JobId, &str, u64)> = chunk
            .iter()
            .filter(|&&i| jobs[i].workflow.is_none())
            .map(|&i| {
                let j = &jobs[i];
                let wait = (delay_of(j).max(0) as u64 + INDEX_RETAIN_MS).max(ttl_of(j));
                (j.id, q, wait.saturating_add(j.result_ttl_ms))
            })
            .collect();
        // Jobs to send, each with the earlier id whose record it declares.
        let mut todo: Vec<(usize, String)> = chunk.iter().map(|&i| (i, String::new())).collect();
        let mut first = true;
        for _ in 0..ENQUEUE_ROUNDS {
            let mut inv = self.inner.scripts.enqueue.prepare_invoke();
            queue_keys(&mut inv, &p);
            inv.arg(&p)
                .arg(self.chan(q))
                .arg(q)
                .arg(ttl_ms(self.inner.idempotency_ttl))
                .arg(todo.len());
            for (i, earlier) in &todo {
                let j = &jobs[*i];
                let idem = match (&j.idempotency_key, &j.workflow) {
                    (Some(k), _) => {
                        inv.key(format!("{p}idem:{k}"));
                        inv.key(final_key(&p, j.id));
                        k.as_str()
                    }
                    // A workflow's step: stored once by its id.
                    (None, Some(_)) => {
                        inv.key(final_key(&p, j.id));
                        "="
                    }
                    (None, None) => "",
                };
                if !earlier.is_empty() {
                    inv.key(final_key(&p, earlier));
                }
                inv.arg(j.id.to_string())
                    .arg(j.to_json())
                    .arg(delay_of(j))
                    .arg(idem)
                    .arg(ttl_of(j))
                    .arg(j.priority)
                    .arg(earlier);
            }
            inv.arg(self.hist_minute(q));
            let mut conn = self.conn();
            let reply = if first {
                first = false;
                // The jobs first: a worker waits for them, nobody for the index.
                let (reply, indexed) =
                    tokio::join!(inv.invoke_async::<Value>(&mut conn), self.index(&entries));
                // Stored but not indexed: lookups still find it (slower).
                if let Err(e) = indexed {
                    tracing::warn!(queue = %q, "indexing jobs: {e}");
                }
                reply?
            } else {
                inv.invoke_async::<Value>(&mut conn).await?
            };
            let reply = as_array(reply);
            if reply.len() != todo.len() * 2 + 1 {
                return Err(protocol("enqueue reply has the wrong length"));
            }
            self.saw_hist_minute(q, reply.last());
            let mut again = Vec::new();
            for (k, (i, _)) in todo.iter().enumerate() {
                let flag = as_string(&reply[2 * k]).unwrap_or_default();
                let arg = as_string(&reply[2 * k + 1]).unwrap_or_default();
                results[*i] = match flag.as_str() {
                    "dup" => Some(Enqueued {
                        job: Job::from_json(&arg)?,
                        created: false,
                    }),
                    "new" => Some(Enqueued {
                        job: jobs[*i].clone(),
                        created: true,
                    }),
                    "again" => {
                        again.push((*i, arg));
                        continue;
                    }
                    other => return Err(protocol(&format!("enqueue replied {other:?}"))),
                };
            }
            if again.is_empty() {
                return Ok(());
            }
            todo = again;
        }
        Err(protocol("enqueue: an idempotency key kept changing"))
    }

    /// The records of jobs `ids` of `queue`, in order (None where a record
    /// is gone), final or live: one MGET, one HMGET and one ZMSCORE (of
    /// `ends`), in one round trip, per [`ENQUEUE_CHUNK`] ids.
    async fn records(
        &self,
        queue: &str,
        ids: &[impl AsRef<str>],
    ) -> BrokerResult<Vec<Option<String>>> {
        let p = prefix(queue);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ENQUEUE_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|id| final_key(&p, id.as_ref())).collect();
            let fields: Vec<&str> = chunk.iter().map(|id| id.as_ref()).collect();
            type Recs = Vec<Option<String>>;
            let (fin, live, ends): (Recs, Recs, Vec<Option<f64>>) = redis::pipe()
                .cmd("MGET")
                .arg(&keys)
                .cmd("HMGET")
                .arg(live_key(&p))
                .arg(&fields)
                .cmd("ZMSCORE")
                .arg(format!("{p}ends"))
                .arg(&fields)
                .query_async(&mut self.conn())
                .await?;
            out.extend(
                fin.into_iter()
                    .zip(live)
                    .zip(ends)
                    .map(|((f, l), e)| self.pick_record(f, l, e)),
            );
        }
        Ok(out)
    }

    /// Purges the delayed set (`'d'`), by rank from its start, or the ready
    /// list (`'r'`), from its tail, a page at a time. Pages enough for
    /// what is there now, twice over (pages overlap when entries shift): a
    /// purge does not chase jobs enqueued after it started for ever.
    async fn purge_place(
        &self,
        queue: &str,
        filter: &PurgeFilter,
        place: char,
        out: &mut Vec<JobId>,
    ) -> BrokerResult<()> {
        // The two sorted sets are read by rank, the list from its tail.
        let delayed = place != 'r';
        let key = format!(
            "{}{}",
            prefix(queue),
            match place {
                'd' => "delayed",
                'p' => "prio",
                _ => "ready",
            }
        );
        let len: usize = if delayed {
            self.conn().zcard(&key).await?
        } else {
            self.conn().llen(&key).await?
        };
        let page = PURGE_PAGE as isize;
        // Entries passed over: from the set's start, or the list's tail.
        let mut passed = 0isize;
        for _ in 0..2 * (len / PURGE_PAGE) + 2 {
            let members: Vec<String> = if delayed {
                self.conn().zrange(&key, passed, passed + page - 1).await?
            } else {
                self.conn()
                    .lrange(&key, -passed - page, -passed - 1)
                    .await?
            };
            let removed = self.purge_page(queue, filter, &members, place, out).await?;
            if members.len() < PURGE_PAGE {
                break;
            }
            passed += (members.len() - removed) as isize;
        }
        Ok(())
    }

    /// Purges what `filter` picks among `members` (of the delayed set, `'d'`,
    /// or the ready list, `'r'`) and drops their stale entries; adds the ids
    /// purged (or, dry, those it would purge) to `out`. Returns how many
    /// entries left the page's list or set.
    ///
    /// Pages are read by rank, so an entry removed meanwhile by a worker
    /// shifts the rest. The ready list is read from its tail: workers pop
    /// its head and producers push at its tail, so a shift only makes a
    /// page start earlier (entries read twice, never skipped). The delayed
    /// set loses its head to the ready list as jobs come due: those are
    /// met again in the ready list, read after it.
    async fn purge_page(
        &self,
        queue: &str,
        filter: &PurgeFilter,
        members: &[String],
        place: char,
        out: &mut Vec<JobId>,
    ) -> BrokerResult<usize> {
        if members.is_empty() {
            return Ok(0);
        }
        let p = prefix(queue);
        let ids: Vec<&str> = members.iter().map(|m| member_id(m)).collect();
        let recs = self.records(queue, &ids).await?;
        let at = Utc::now();
        let mut inv = self.inner.scripts.purge.prepare_invoke();
        queue_keys(&mut inv, &p);
        inv.arg(&p).arg(self.chan(queue)).arg(queue);
        let mut entries = Vec::new();
        let mut indexed = Vec::new();
        for ((id, member), rec) in ids.iter().zip(members).zip(&recs) {
            let job = rec.as_deref().map(Job::from_json).transpose();
            match job {
                Ok(Some(job)) if filter.takes(&job) => {
                    if filter.dry_run {
                        out.push(job.id);
                        continue;
                    }
                    let revoked = job.revoked(PURGED, at);
                    let ttl = revoked.result_ttl_ms.max(1);
                    entries.push([
                        id.to_string(),
                        member.clone(),
                        place.to_string(),
                        rec.clone().unwrap_or_default(),
                        revoked.to_json(),
                        ttl.to_string(),
                    ]);
                    indexed.push((job.id, ttl));
                }
                // Gone or final: an entry left behind (a job revoked
                // before it ran is skipped when popped); dropped too.
                Ok(job) if job.as_ref().is_none_or(|j| j.state.is_final()) && !filter.dry_run => {
                    entries.push([
                        id.to_string(),
                        member.clone(),
                        place.to_string(),
                        String::new(),
                        String::new(),
                        "0".into(),
                    ]);
                }
                // Another task's, or a record this build cannot read:
                // left as it is.
                _ => {}
            }
        }
        if entries.is_empty() {
            return Ok(0);
        }
        inv.arg(entries.len());
        for e in &entries {
            inv.key(final_key(&p, &e[0]));
            for a in e {
                inv.arg(a);
            }
        }
        let purged: Vec<String> = inv.invoke_async(&mut self.conn()).await?;
        let purged: Vec<JobId> = purged.iter().filter_map(|s| s.parse().ok()).collect();
        // Kept a result TTL from now: so are their index entries.
        let index: Vec<_> = indexed
            .iter()
            .filter(|(id, _)| purged.contains(id))
            .map(|&(id, ttl)| (id, queue, ttl.saturating_add(INDEX_RETAIN_MS)))
            .collect();
        if let Err(e) = self.index(&index).await {
            tracing::warn!(queue, "indexing purged jobs: {e}");
        }
        // The script says which jobs it purged, not which stale entries it
        // dropped: those sent are counted (one that came back to life
        // meanwhile only makes the next page overlap this one).
        let removed = purged.len() + entries.iter().filter(|e| e[3].is_empty()).count();
        out.extend(purged);
        Ok(removed)
    }

    /// Up to `limit` dead letters from rank `start` (among those that died
    /// at `until` or before, when given): how many entries the
    /// page held, how many of them have records this build cannot read
    /// (left in place), and the readable ones. Entries whose records
    /// expired are dropped from the set.
    async fn dead_page(
        &self,
        queue: &str,
        start: usize,
        limit: usize,
        fate: &str,
        until: Option<f64>,
    ) -> BrokerResult<(usize, usize, Vec<Job>)> {
        let mut conn = self.conn();
        let p = prefix(queue);
        let first = start as isize;
        // By score (their time of death), up to `until`.
        let until = until.map_or_else(|| "+inf".to_string(), |u| u.to_string());
        let ids: Vec<String> = conn
            .zrangebyscore_limit(
                format!("{p}dead"),
                "-inf",
                until,
                first,
                limit.max(1) as isize,
            )
            .await?;
        let recs = self.records(queue, &ids).await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, rec) in ids.iter().zip(recs) {
            match rec {
                Some(r) => out.extend(readable(queue, id, &r, fate)),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            // Their records expired: nothing left to replay.
            let _: () = conn.zrem(format!("{p}dead"), &gone).await?;
        }
        let unreadable = ids.len() - gone.len() - out.len();
        Ok((ids.len(), unreadable, out))
    }

    /// Puts `jobs` back as fresh attempts if they are still dead letters.
    async fn replay_jobs(&self, queue: &str, jobs: &[Job]) -> BrokerResult<Vec<JobId>> {
        let p = prefix(queue);
        let mut replayed = Vec::new();
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            let mut inv = self.inner.scripts.replay.prepare_invoke();
            queue_keys(&mut inv, &p);
            inv.arg(&p).arg(self.chan(queue)).arg(queue);
            for j in chunk {
                inv.key(final_key(&p, j.id));
                inv.arg(j.id.to_string()).arg(j.fresh_attempt().to_json());
            }
            let done: Vec<String> = inv.invoke_async(&mut self.conn()).await?;
            let done: Vec<JobId> = done.iter().filter_map(|s| s.parse().ok()).collect();
            // Waiting again: indexed as a job enqueued now.
            let entries: Vec<_> = chunk
                .iter()
                .filter(|j| done.contains(&j.id))
                .map(|j| (j.id, queue, INDEX_RETAIN_MS.saturating_add(j.result_ttl_ms)))
                .collect();
            if let Err(e) = self.index(&entries).await {
                tracing::warn!(queue, "indexing replayed jobs: {e}");
            }
            replayed.extend(done);
        }
        Ok(replayed)
    }
}

/// Index entries to refresh when `completions` are settled at `now` (ms):
/// the entry written at enqueue covers a record kept its result TTL after a
/// job that ends within a day of its due time, not a dead letter (kept
/// 7 days) nor a job that ends later (a long wait, long retries).
fn reindexed<'a>(
    completions: &[Completion],
    queue: &'a str,
    now: i64,
) -> Vec<(JobId, &'a str, u64)> {
    const MARGIN_MS: u64 = 3600 * 1000;
    completions
        .iter()
        .filter_map(|c| match &c.settlement {
            Settlement::Finish { job, dead } => {
                let late = id_age_ms(c.lease.id, now) > (INDEX_RETAIN_MS / 2) as i64;
                let ttl = if *dead {
                    ttl_ms(DEAD_LETTER_TTL)
                } else {
                    job.result_ttl_ms
                };
                (*dead || late).then_some((c.lease.id, queue, ttl.saturating_add(MARGIN_MS)))
            }
            _ => None,
        })
        .collect()
}

/// The arguments of completion `c`; `now` is this process's clock (a
/// retry's due time goes to the script as a delay from the server's now).
fn push_completion(inv: &mut redis::ScriptInvocation<'_>, c: &Completion, now: i64) {
    let p = if c.had_progress { "p" } else { "" };
    match &c.settlement {
        Settlement::Finish { job, dead } => {
            let ttl = if *dead {
                ttl_ms(DEAD_LETTER_TTL)
            } else {
                job.result_ttl_ms.max(1)
            };
            inv.arg(&c.lease.member)
                .arg(format!("{}{p}", if *dead { "D" } else { "F" }))
                .arg(job.to_json())
                .arg(ttl)
                .arg(c.lease.id.to_string())
                .arg("")
                .arg(0)
                .arg(job.state.as_str());
        }
        Settlement::Retry {
            job,
            due,
            if_revoked,
        } => {
            inv.arg(&c.lease.member)
                .arg(format!("R{p}"))
                .arg(job.to_json())
                .arg((due.timestamp_millis() - now).max(0))
                .arg(c.lease.id.to_string())
                .arg(if_revoked.to_json())
                .arg(if_revoked.result_ttl_ms.max(1))
                .arg("RETRY");
        }
        Settlement::Release { started } => {
            // `s`: it ran (its start stays in the rate-limit logs).
            let s = if *started { "s" } else { "" };
            inv.arg(&c.lease.member)
                .arg(format!("H{p}{s}"))
                .arg("")
                .arg(0)
                .arg(c.lease.id.to_string())
                .arg("")
                .arg(0)
                .arg("PENDING");
        }
    }
}

/// How a pub/sub connection is kept honest: after `every` without a
/// message it is sent a PING, and a PING not answered within `timeout`
/// counts the connection dead (a silent TCP drop, a NAT that forgot it, a
/// paused server), so that its owner reconnects instead of waiting
/// forever; a connection closed by the server ends its stream at once.
/// The default, a PING after 120 s of silence, costs an idle process half
/// a command a minute per subscription; a peer that vanished is noticed
/// sooner by TCP keepalive ([`open_client`]), a paused server by the PING.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub every: Duration,
    pub timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            every: Duration::from_secs(120),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Hands each message of `ps` to `on` until `on` returns false or
/// `closed()` says the listener is gone (returns true: stop), or the
/// connection is dead: its stream ended or a PING went unanswered (returns
/// false: reconnect).
pub(crate) async fn listen(
    ps: redis::aio::PubSub,
    live: Liveness,
    closed: impl Fn() -> bool,
    mut on: impl FnMut(redis::Msg) -> bool,
) -> bool {
    let (mut sink, mut stream) = ps.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(m) => {
                    if !on(m) {
                        return true;
                    }
                }
                None => return false,
            },
            _ = tokio::time::sleep(live.every) => {
                if closed() {
                    return true;
                }
                let answer = tokio::time::timeout(live.timeout, sink.ping::<Value>()).await;
                if !matches!(answer, Ok(Ok(_))) {
                    tracing::warn!("a Redis pub/sub connection did not answer a PING; reconnecting");
                    return false;
                }
            }
        }
    }
}

/// A worker's subscription: its queues' classic channels, or their shard
/// channels on a cluster; the control channel (classic) either way.
enum SignalFeed {
    Classic(redis::aio::PubSub),
    Sharded(ShardFeed),
}

async fn connect_signals(client: &RedisEndpoint, queues: &[String]) -> BrokerResult<SignalFeed> {
    if let Some(seeds) = client.shards() {
        let control = vec![CONTROL_CHANNEL.to_string()];
        let feed = ShardFeed::open(seeds, shard_channels(queues), control, None).await?;
        return Ok(SignalFeed::Sharded(feed));
    }
    let mut ps = client.pubsub().await?;
    for q in queues {
        ps.subscribe(channel(q)).await?;
    }
    ps.subscribe(CONTROL_CHANNEL).await?;
    Ok(SignalFeed::Classic(ps))
}

/// Forwards pub/sub messages as [`Signal`]s; reconnects with backoff and
/// logs once per outage. Ends when the receiver is dropped.
async fn signal_loop(
    client: RedisEndpoint,
    me: String,
    queues: Vec<String>,
    tx: mpsc::UnboundedSender<Signal>,
    first: SignalFeed,
    clock: Arc<Clock>,
    live: Liveness,
) {
    let mut next = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut outage_logged = false;
    loop {
        let ps = match next.take() {
            Some(ps) => ps,
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                match connect_signals(&client, &queues).await {
                    Ok(ps) => ps,
                    Err(e) => {
                        if !outage_logged {
                            tracing::warn!(error = %e, "Redis unreachable; retrying with backoff");
                            outage_logged = true;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
        };
        if outage_logged {
            tracing::info!("Redis reachable again");
        }
        backoff = Duration::from_millis(100);
        if tx.send(Signal::Reconnected).is_err() {
            return;
        }
        let stopped = match ps {
            SignalFeed::Classic(ps) => {
                listen(
                    ps,
                    live,
                    || tx.is_closed(),
                    |msg| match msg.get_payload::<String>() {
                        Ok(payload) => forward(msg.get_channel_name(), &payload, &me, &tx, &clock),
                        Err(_) => true,
                    },
                )
                .await
            }
            // Channels lost and subscribed again: what was published
            // meanwhile is looked for, as after a reconnect.
            SignalFeed::Sharded(feed) => {
                feed.listen(
                    live,
                    tx.closed(),
                    || tx.is_closed(),
                    |chan, payload| forward(chan, payload, &me, &tx, &clock),
                    || tx.send(Signal::Reconnected).is_ok(),
                )
                .await
            }
        };
        if stopped || tx.is_closed() {
            return;
        }
        tracing::warn!("Redis signal connection lost; reconnecting");
        metrics::counter!("runner_redis_reconnects_total", "connection" => "signals").increment(1);
        outage_logged = true;
    }
}

/// Whether `reply` can name an inspect reply channel: what
/// [`Broker::inspect`] makes (a UUID), nothing a stray message could use to
/// reach another channel.
fn valid_reply(reply: &str) -> bool {
    reply.len() <= 64 && reply.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn reply_channel(reply: &str) -> String {
    format!("runner:reply:{reply}")
}

/// Turns one pub/sub message (on `chan`) into [`Signal`]s for worker
/// `me`; false once the receiver is gone.
fn forward(
    chan: &str,
    payload: &str,
    me: &str,
    tx: &mpsc::UnboundedSender<Signal>,
    clock: &Clock,
) -> bool {
    #[derive(Deserialize)]
    struct Control {
        revoke: Option<String>,
        #[serde(default)]
        terminate: bool,
        inspect: Option<String>,
    }
    if chan == CONTROL_CHANNEL {
        let Ok(c) = serde_json::from_str::<Control>(payload) else {
            return true;
        };
        if let Some(reply) = c.inspect.filter(|r| valid_reply(r)) {
            return tx.send(Signal::Inspect { reply }).is_ok();
        }
        match c.revoke.map(|id| id.parse()) {
            Some(Ok(id)) => tx
                .send(Signal::Revoke {
                    id,
                    terminate: c.terminate,
                })
                .is_ok(),
            _ => true,
        }
    } else {
        let Ok(m) = serde_json::from_str::<WireSignal>(payload) else {
            return true;
        };
        let mut ok = true;
        // Jobs pushed to another worker are skipped, not read: only the
        // worker they were pushed to decodes their records.
        if let (Some(_), Some(w)) = (m.push, &m.w)
            && w == me
        {
            let read = serde_json::from_str::<WirePush>(payload)
                .map_err(|e| protocol(&format!("push: {e}")))
                .and_then(|p| deliveries(&m.q, p.push.into_iter()));
            match read {
                Ok(deliveries) => {
                    ok &= tx
                        .send(Signal::Pushed {
                            queue: m.q.clone(),
                            worker: w.clone(),
                            deliveries,
                        })
                        .is_ok();
                }
                // Left to run out: the lease's end brings the jobs back.
                Err(e) => tracing::warn!(queue = %m.q, error = %e, "a push that cannot be read"),
            }
        }
        if m.ready.unwrap_or(0) > 0 {
            ok &= tx.send(Signal::Work { queue: m.q.clone() }).is_ok();
        }
        if m.prio.is_some() {
            ok &= tx.send(Signal::Prioritized { queue: m.q.clone() }).is_ok();
        }
        if let Some(w) = m.wake {
            ok &= tx
                .send(Signal::WakeAt {
                    queue: m.q.clone(),
                    at: clock.local(w),
                })
                .is_ok();
        }
        // Another worker's lease: if that worker dies, someone must
        // reclaim the job once the lease is over.
        if let (Some(l), Some(w)) = (m.lease, &m.w) {
            ok &= tx
                .send(Signal::LeaseUntil {
                    queue: m.q.clone(),
                    worker: w.clone(),
                    at: clock.local(l),
                })
                .is_ok();
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each script starts with the shebang that makes a cluster refuse a
    /// key outside its slot (`cluster::a_script_that_strays_from_its_slot_is_refused`
    /// shows the refusal; the conformance suite on a cluster, that no
    /// script strays).
    /// Listing workers reads one slot of a cluster: the set of ids and
    /// every heartbeat share it.
    #[test]
    fn the_workers_keys_share_one_slot() {
        use redis::cluster_routing::Slot;
        for id in ["w-1", "bench-2x-0", "host:1234"] {
            assert_eq!(Slot::for_key(worker_key(id)), Slot::for_key(WORKERS_KEY));
        }
    }

    /// The scripts put a record in a message up to the size the Rust side
    /// documents.
    #[test]
    fn records_in_messages_are_capped_as_documented() {
        let line = format!(
            "local RECORD_IN_MESSAGE_MAX = {}\n",
            super::super::EVENT_RECORD_MAX
        );
        assert!(include_str!("lua/check.lua").contains(&line));
    }

    /// Strict keys refuse what a strict server refuses: a command on a key
    /// the call did not declare (wherever the command keeps its keys),
    /// and a command the check does not know. Plain scripts run as before.
    #[tokio::test]
    async fn strict_scripts_refuse_undeclared_keys() {
        let server = runner_test_support::RedisServer::start();
        let mut conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let run = async |conn: &mut redis::aio::MultiplexedConnection, strict, body: &str| {
            Script::new(&script_source(body, strict))
                .key("runner:{q}:a")
                .key("runner:{q}:b")
                .arg("runner:{q}:c")
                .invoke_async::<Value>(conn)
                .await
        };
        let declared = "redis.call('SET', KEYS[1], 'x')\nreturn redis.call('GET', KEYS[1])";
        assert_eq!(
            as_string(&run(&mut conn, true, declared).await.unwrap()).as_deref(),
            Some("x")
        );
        let cases = [
            (
                "return redis.call('GET', ARGV[1])",
                "GET on undeclared key runner:{q}:c",
            ),
            (
                "return redis.call('MGET', KEYS[1], KEYS[2], ARGV[1])",
                "MGET on undeclared key runner:{q}:c",
            ),
            (
                "redis.call('MSET', KEYS[1], ARGV[1], ARGV[1], 1)\nreturn false",
                "MSET on undeclared key runner:{q}:c",
            ),
            (
                "return redis.pcall('hexists', ARGV[1] .. ':h', 'f')",
                "HEXISTS on undeclared key runner:{q}:c:h",
            ),
            (
                "return redis.call('APPEND', KEYS[1], 'y')",
                "command APPEND is not known",
            ),
        ];
        for (body, refused) in cases {
            let e = run(&mut conn, true, body).await.unwrap_err();
            assert!(e.to_string().contains(refused), "{body}: {e}");
            run(&mut conn, false, body).await.unwrap();
        }
    }

    #[test]
    fn every_script_is_sent_with_a_shebang() {
        for strict in [false, true] {
            let src = script_source("return 1", strict);
            assert!(src.starts_with("#!lua\n"), "{src}");
            assert!(src.ends_with("\nreturn 1"));
            assert_eq!(src.contains("strict_check"), strict);
        }
    }
}
