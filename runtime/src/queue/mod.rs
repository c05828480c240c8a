//! The queue engine: the job model, the [`Broker`] trait and its two
//! implementations.
//!
//! - [`RedisBroker`]: production. Several workers on several machines share
//!   one Redis. Every key of a queue carries the `{queue}` hash tag; every
//!   state change is one Lua script, so a job costs few Redis commands (see
//!   `redis.rs` for the budget).
//! - [`EmbeddedBroker`]: in-process, state in memory only. Used when no
//!   Redis URL is configured (`runner dev`); everything is lost when the
//!   process exits.
//!
//! Delivery is at least once with leases: a worker leases jobs with
//! [`Broker::settle`], extends the leases while it runs them and settles them
//! (result, retry or hand-back) with the next `settle` call. A lease that
//! runs out puts the job back. Nothing here polls: workers learn of new work
//! from [`Broker::signals`], waiters from [`Broker::subscribe`].
//!
//! The queue never runs anything and knows nothing of tasks, modules or the
//! registry: the producer (`crate::producer`) resolves task names before it
//! enqueues.

pub mod embedded;
pub mod endpoint;
pub mod history;
pub mod job;
pub mod list;
pub mod partition;
pub mod ratelimit;
pub mod redis;
mod shard_feed;
pub mod workflow;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

pub use embedded::EmbeddedBroker;
pub use job::{
    DEFAULT_QUEUE, FailureKind, Job, JobError, JobFailure, JobId, JobLimits, JobState, Progress,
    RateLimit, RetryPolicy,
};
pub use list::{JobPage, JobQuery};
pub use redis::RedisBroker;
pub use workflow::{MarkKind, WfMark, WfMarked, WfState, WfStored};

/// A worker's claim on one job. The `member` string identifies this very
/// delivery: a settlement with a stale lease is ignored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Lease {
    pub queue: String,
    pub id: JobId,
    pub member: String,
    /// Times this job was redelivered because a lease ran out.
    pub redeliveries: u32,
}

/// What a lease member says: `<id>|<redeliveries>|<worker>|<leased ms>`,
/// the one format of both brokers (and of the Redis scripts, which read
/// the worker and the time from it). A worker id never contains `|`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LeaseMember {
    pub id: JobId,
    pub redeliveries: u32,
    pub worker: String,
    /// When the lease was taken, in Unix milliseconds.
    pub leased_ms: i64,
}

impl LeaseMember {
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.id, self.redeliveries, self.worker, self.leased_ms
        )
    }

    /// `job` as this lease shows it: STARTED by the lease's worker at the
    /// lease's time (the one rewrite of a record's state from its lease,
    /// for a lookup and for a delivery alike).
    pub fn show_started(&self, job: &mut Job) {
        job.state = JobState::Started;
        job.worker = Some(self.worker.clone());
        job.started_at = Some(ms_to_time(self.leased_ms));
        job.redeliveries = self.redeliveries;
    }

    /// The lease of `queue` this member (its text `member`) stands for.
    pub fn lease(&self, queue: &str, member: String) -> Lease {
        Lease {
            queue: queue.to_string(),
            id: self.id,
            member,
            redeliveries: self.redeliveries,
        }
    }

    pub fn parse(member: &str) -> Option<LeaseMember> {
        let mut parts = member.splitn(4, '|');
        Some(LeaseMember {
            id: parts.next()?.parse().ok()?,
            redeliveries: parts.next()?.parse().ok()?,
            worker: parts.next()?.to_string(),
            leased_ms: parts.next()?.parse().ok()?,
        })
    }
}

/// A job not final yet as a lookup shows it at `now`: STARTED under its
/// `lease` when one holds it, else EXPIRED once its expiry has passed
/// (else as stored). The one reading of a waiting record for status,
/// listings and both brokers.
pub fn show_open(job: &mut Job, lease: Option<LeaseMember>, now: DateTime<Utc>) {
    match lease {
        Some(member) => member.show_started(job),
        None => job.show_expired(now),
    }
}

/// A job handed to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub job: Job,
    pub lease: Lease,
    /// When the lease was taken: the job's start time for rate limits.
    pub leased_at: DateTime<Utc>,
}

/// What a worker reports for a leased job.
// A few of these live at once, in a settle batch: boxing the jobs would buy
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Settlement {
    /// A final record (SUCCESS, FAILURE, REVOKED, EXPIRED), kept for
    /// `job.result_ttl_ms` (or the dead-letter TTL when `dead`).
    Finish { job: Job, dead: bool },
    /// Run again at `due`. `if_revoked` is stored instead when the job was
    /// revoked while it ran.
    Retry {
        job: Job,
        due: DateTime<Utc>,
        if_revoked: Job,
    },
    /// Give the job back to run again: leased ahead and never started
    /// (`started: false`: its start leaves the rate-limit logs), or a run
    /// stopped by the worker's shutdown (`started: true`: it ran, so its
    /// start still counts).
    Release { started: bool },
}

#[derive(Clone, Debug)]
pub struct Completion {
    pub lease: Lease,
    pub settlement: Settlement,
    /// The job stored progress that must now be cleared.
    pub had_progress: bool,
}

/// One round trip between a worker and the broker: settle finished jobs,
/// lease new ones.
#[derive(Clone, Debug)]
pub struct SettleRequest {
    pub queue: String,
    pub worker: String,
    /// Shared, not copied: the caller keeps them (to settle again after
    /// an error, to advance workflows after the call).
    pub completions: Arc<[Completion]>,
    /// Lease up to this many jobs.
    pub fetch: usize,
    /// Also move due delayed jobs and reclaim expired leases.
    pub due_check: bool,
    /// The caller holds leases in this queue and extends them itself: its
    /// own leases are left out of `next_due`. A caller that holds none gets
    /// them too (they can only be orphans of a lost reply or an earlier run).
    pub holds_leases: bool,
    pub lease: Duration,
    /// Jobs with a priority may wait: lease them first. Without it only
    /// the default priority's list is read (one command less); a worker
    /// sets it when told of prioritized jobs ([`Signal::Prioritized`]),
    /// and until a call finds none left.
    pub prioritized: bool,
    /// When the fetch drains the queue, register up to this many free
    /// slots of the worker as idle, so that the next enqueue leases jobs
    /// straight to it ([`Signal::Pushed`]); 0: do not. Brokers that wake
    /// workers without a round trip (the embedded one) ignore it.
    pub idle: usize,
    /// The worker is registered as idle in this queue: a call that does
    /// not register it again ends the registration.
    pub registered: bool,
}

/// What [`Broker::extend`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extended {
    /// Jobs whose lease was already lost (redelivered elsewhere).
    pub lost: Vec<JobId>,
    /// Held jobs revoked since they were leased, and whether the revoke
    /// asked to terminate the run.
    pub revoked: Vec<(JobId, bool)>,
}

#[derive(Clone, Debug, Default)]
pub struct SettleReply {
    pub deliveries: Vec<Delivery>,
    /// Completions whose lease was no longer held (the job was redelivered).
    pub stale: Vec<JobId>,
    /// Earliest time something in this queue comes due (a delayed job or a
    /// lease that may run out), when `due_check` was asked for.
    pub next_due: Option<DateTime<Utc>>,
    /// Earliest time a job deferred by this call (retry, rate limit) is due.
    pub deferred_until: Option<DateTime<Utc>>,
    /// Entries taken from the ready list: leased, deferred by a rate limit,
    /// or dropped (expired, revoked). Fewer than `fetch` means the list is
    /// empty; fewer deliveries alone does not.
    pub popped: usize,
    /// Leases of lost workers that ran out and were taken back by this
    /// call (their jobs run again, or end REVOKED if revoked meanwhile).
    pub reclaimed: usize,
    /// Asked for `prioritized`: prioritized jobs may be left (false once
    /// a fetch found fewer than it asked for).
    pub prioritized_left: bool,
    /// Workflow members whose end was written to the queue's outbox more
    /// than [`workflow::OUTBOX_STALE`] ago and never applied (their
    /// applier died): found by a due check, to apply again.
    pub outbox: Vec<JobId>,
    /// How many jobs the worker's registration as idle in the queue offers
    /// now (see [`SettleRequest::idle`]): the call's free slots, less the
    /// jobs the call leased; 0 when it is not registered.
    pub offered: usize,
    /// A push used the worker's registration up and its jobs have not
    /// reached the worker yet ([`Signal::Pushed`]): they come first, so this
    /// call leased nothing.
    pub push_in_flight: bool,
}

impl SettleReply {
    /// The worker is now registered as idle in the queue.
    pub fn registered(&self) -> bool {
        self.offered > 0
    }
}

/// What wakes a worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// New jobs are ready in `queue`.
    Work { queue: String },
    /// Jobs with a priority are ready in `queue` (sent with `Work`).
    Prioritized { queue: String },
    /// Something in `queue` comes due at `at`.
    WakeAt { queue: String, at: DateTime<Utc> },
    /// Another worker leased jobs of `queue` until `at`: if it dies, they
    /// must be reclaimed then.
    LeaseUntil {
        queue: String,
        worker: String,
        at: DateTime<Utc>,
    },
    /// An enqueue leased jobs of `queue` straight to `worker`, which had
    /// registered as idle there ([`SettleRequest::idle`]): that worker
    /// holds them now, as if its own call had leased them.
    Pushed {
        queue: String,
        worker: String,
        deliveries: Vec<Delivery>,
    },
    /// Drop the job if it waits here; stop it if it runs and `terminate`.
    Revoke { id: JobId, terminate: bool },
    /// An operator asks what every worker holds: answer with
    /// [`Broker::answer`] to `reply`.
    Inspect { reply: String },
    /// The signal connection was re-established: signals may have been missed.
    Reconnected,
}

/// A job a worker holds: running (`started_at` set), or leased and waiting
/// for a free slot (prefetched, "reserved").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeldJob {
    pub id: JobId,
    pub queue: String,
    pub task: Option<String>,
    pub attempt: u32,
    pub redeliveries: u32,
    /// When the worker leased it.
    pub leased_at: DateTime<Utc>,
    /// When its run began; `None` while it waits in the worker's buffer.
    pub started_at: Option<DateTime<Utc>>,
    /// Fuel used so far (as of the last epoch tick, every 10 ms), when
    /// the worker meters fuel.
    pub fuel_used: Option<u64>,
    /// Its fuel budget, when it has one.
    pub fuel_limit: Option<u64>,
}

/// What a worker holds right now, as it answered an inspect request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerSnapshot {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub queues: Vec<String>,
    pub concurrency: usize,
    pub prefetch: usize,
    pub processed: u64,
    pub failed: u64,
    /// Running now, oldest first.
    pub active: Vec<HeldJob>,
    /// Leased and waiting for a slot, in the order they will start.
    pub reserved: Vec<HeldJob>,
    /// When it answered.
    pub at: DateTime<Utc>,
}

/// The longest wait for workers' answers to an inspect request.
pub const MAX_INSPECT_WAIT: Duration = Duration::from_secs(10);

/// Gathers the answers to an inspect request that `asked` workers heard:
/// until all of them answered or `timeout` (at most [`MAX_INSPECT_WAIT`])
/// passed. Sorted by worker id.
pub(crate) async fn gather_answers(
    mut answers: impl futures::Stream<Item = WorkerSnapshot> + Unpin,
    asked: usize,
    timeout: Duration,
) -> Vec<WorkerSnapshot> {
    use futures::StreamExt as _;
    let deadline = tokio::time::Instant::now() + timeout.min(MAX_INSPECT_WAIT);
    let mut out: Vec<WorkerSnapshot> = Vec::with_capacity(asked);
    while out.len() < asked {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(snapshot)) => out.push(snapshot),
            Ok(None) | Err(_) => break,
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// A job's state changed (or its progress moved).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvent {
    pub id: JobId,
    pub queue: String,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The job's final record (JSON) when the broker sent it with the end
    /// (Redis does for records up to [`EVENT_RECORD_MAX`] bytes) and this
    /// process wants it ([`Broker::want_record`]): whoever waits for the
    /// end needs no read.
    #[serde(skip)]
    pub record: Option<Arc<str>>,
}

/// The largest final record sent with a job's end event (`settle.lua`).
pub const EVENT_RECORD_MAX: usize = 16384;

/// The final records this process's job events carry: only those of jobs
/// someone waits for ([`Broker::want_record`]). Every receiver of the
/// event feed shares one ring of events, and a receiver that stops
/// reading (an event stream whose client went quiet) holds every event
/// after its place until the ring wraps: 65,536 of them on Redis. With
/// every record of up to 16 KiB in them, that was up to 1 GiB held by one
/// quiet client; without the records nobody asked for, a few MiB.
#[derive(Default)]
pub struct RecordWants {
    /// Receivers that want every record (they read eagerly: a benchmark).
    all: usize,
    ids: std::collections::HashMap<JobId, usize>,
}

impl RecordWants {
    /// Whether a final record of `id` is wanted.
    pub fn wants(&self, id: &JobId) -> bool {
        self.all > 0 || self.ids.contains_key(id)
    }

    /// Wants `id`'s final record (every record: `None`) until the guard
    /// is dropped.
    pub fn want(wants: &Arc<std::sync::Mutex<RecordWants>>, id: Option<JobId>) -> RecordWant {
        let mut w = wants.lock().unwrap_or_else(|e| e.into_inner());
        match id {
            None => w.all += 1,
            Some(id) => *w.ids.entry(id).or_default() += 1,
        }
        RecordWant {
            wants: Some(wants.clone()),
            id,
        }
    }
}

/// A wish for final records in job events ([`Broker::want_record`]),
/// withdrawn when dropped.
pub struct RecordWant {
    wants: Option<Arc<std::sync::Mutex<RecordWants>>>,
    id: Option<JobId>,
}

impl RecordWant {
    /// For a broker whose events never carry records.
    pub fn unneeded() -> RecordWant {
        RecordWant {
            wants: None,
            id: None,
        }
    }
}

impl Drop for RecordWant {
    fn drop(&mut self) {
        let Some(wants) = &self.wants else { return };
        let mut w = wants.lock().unwrap_or_else(|e| e.into_inner());
        match self.id {
            None => w.all = w.all.saturating_sub(1),
            Some(id) => {
                if let std::collections::hash_map::Entry::Occupied(mut e) = w.ids.entry(id) {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
        }
    }
}

impl JobEvent {
    /// Not a job's event: the feed was cut (Redis restarted, a connection
    /// dropped) and is back, so events may have been missed; whoever
    /// waits reads again.
    pub fn gap() -> JobEvent {
        JobEvent {
            id: JobId(uuid::Uuid::nil()),
            queue: String::new(),
            state: JobState::Pending,
            progress: None,
            record: None,
        }
    }

    pub fn is_gap(&self) -> bool {
        self.id.0.is_nil() && self.queue.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// It was queued and will never run.
    Revoked,
    /// It is running; its worker was told to stop it.
    Terminating,
    /// It is running and will finish, but will not be retried.
    WillNotRetry,
    AlreadyFinal(JobState),
    NotFound,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueStats {
    pub name: String,
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
}

impl QueueStats {
    /// Jobs waiting (ready or delayed) and running (leased): a queue's
    /// depth as its history keeps it (`history.rs`).
    pub fn depth(&self) -> (u64, u64) {
        (self.ready + self.delayed, self.in_flight)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub queues: Vec<String>,
    pub concurrency: usize,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub running: Vec<JobId>,
    pub processed: u64,
    pub failed: u64,
}

#[derive(Clone, Debug)]
pub struct Enqueued {
    pub job: Job,
    /// False when an earlier job with the same idempotency key was returned.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    #[error("broker protocol error: {0}")]
    Protocol(String),
}

impl BrokerError {
    /// The broker could not be reached; the call may be repeated.
    pub fn is_unavailable(&self) -> bool {
        match self {
            BrokerError::Redis(e) => redis_unavailable(e),
            _ => false,
        }
    }
}

/// Whether a Redis error says the server cannot serve now but may soon: the
/// connection failed or dropped, or the server is loading its data
/// (`LOADING`), is a replica (`READONLY`, as during a failover), lost its
/// master (`MASTERDOWN`) or asks to try again (`TRYAGAIN`, `CLUSTERDOWN`).
/// Such a request is retried (or answered 503), never taken as a refusal.
pub fn redis_unavailable(e: &::redis::RedisError) -> bool {
    use ::redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
        )
        || matches!(
            e.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN")
        )
}

/// Which queued jobs [`Broker::purge`] takes (also the body of `POST
/// /v1/queues/{queue}/purge`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PurgeFilter {
    /// Jobs that may run now (default true).
    pub ready: bool,
    /// Jobs waiting for a due time: countdowns, ETAs, retry backoffs, rate
    /// limits (default true).
    pub delayed: bool,
    /// Only the jobs of this task.
    pub task: Option<String>,
    /// List them; change nothing.
    pub dry_run: bool,
}

impl Default for PurgeFilter {
    fn default() -> Self {
        PurgeFilter {
            ready: true,
            delayed: true,
            task: None,
            dry_run: false,
        }
    }
}

impl PurgeFilter {
    /// Whether the purge takes `job` (queued, of the task asked for).
    pub fn takes(&self, job: &Job) -> bool {
        matches!(job.state, JobState::Pending | JobState::Retry) && self.of_task(job)
    }

    /// Whether `job` is of the task asked for (any job without one).
    pub fn of_task(&self, job: &Job) -> bool {
        self.task
            .as_ref()
            .is_none_or(|t| job.task.as_ref() == Some(t))
    }
}

/// The message of a purged job's `revoked` error.
pub const PURGED: &str = "purged from its queue before it ran";

pub type BrokerResult<T> = Result<T, BrokerError>;

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// `"redis"` or `"embedded"`.
    fn kind(&self) -> &'static str;

    /// Stores validated jobs (ready now, or delayed until `eta`). A job whose
    /// idempotency key was seen before is not stored; the earlier job is
    /// returned instead. A workflow's step without a key (its id derived
    /// from the workflow and the step) is stored once by its id in the
    /// same way.
    async fn enqueue(&self, jobs: Vec<Job>) -> BrokerResult<Vec<Enqueued>>;

    /// The job as it is now: STARTED with its worker while leased, with its
    /// latest progress.
    async fn get(&self, id: JobId) -> BrokerResult<Option<Job>>;

    /// Job events of every queue, pushed.
    async fn subscribe(&self) -> BrokerResult<broadcast::Receiver<JobEvent>>;

    /// Has the end events of job `id` (of every job: `None`, for a
    /// receiver that reads eagerly) carry the final record when the broker
    /// sends it, until the guard is dropped ([`RecordWants`]). Take it
    /// before the end can come.
    fn want_record(&self, id: Option<JobId>) -> RecordWant {
        let _ = id;
        RecordWant::unneeded()
    }

    async fn revoke(&self, id: JobId, terminate: bool) -> BrokerResult<RevokeOutcome>;

    /// Settles `completions` and leases up to `fetch` jobs, atomically.
    async fn settle(&self, req: SettleRequest) -> BrokerResult<SettleReply>;

    /// Extends leases; says which were already lost and which of the
    /// jobs were revoked meanwhile (so a worker learns of a revoke even if
    /// the pub/sub message never reached it).
    async fn extend(&self, leases: &[Lease], lease: Duration) -> BrokerResult<Extended>;

    /// Stores the progress of a leased job and publishes it.
    async fn progress(&self, lease: &Lease, progress: &Progress) -> BrokerResult<()>;

    /// Wake-ups for worker `worker` consuming `queues`, plus revoke
    /// requests; jobs pushed to it ([`Signal::Pushed`]), not those pushed
    /// to other workers.
    async fn signals(
        &self,
        worker: &str,
        queues: &[String],
    ) -> BrokerResult<mpsc::UnboundedReceiver<Signal>>;

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()>;
    async fn worker_gone(&self, worker_id: &str) -> BrokerResult<()>;
    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>>;

    /// Makes a queue known (listed) before any job was sent to it.
    async fn register_queue(&self, queue: &str) -> BrokerResult<()>;
    async fn queues(&self) -> BrokerResult<Vec<QueueStats>>;

    /// The last hour of each of `queues`, minute by minute (see
    /// [`history`]), in the order asked.
    async fn history(&self, queues: &[String]) -> BrokerResult<Vec<history::Minutes>>;

    /// How many starts each of `limits` counts now in its window, in
    /// `queue` (a limit counts the starts of one queue: `ratelimit.rs`).
    async fn rate_usage(&self, queue: &str, limits: &[RateLimit]) -> BrokerResult<Vec<u64>>;

    /// Dead letters of `queue`, oldest first.
    async fn dead_letters(&self, queue: &str, limit: usize) -> BrokerResult<Vec<Job>>;
    /// Puts dead letters back as new attempts (all of them when `ids` is
    /// empty); returns the ids replayed.
    async fn replay(&self, queue: &str, ids: &[JobId]) -> BrokerResult<Vec<JobId>>;

    /// Ends queued jobs of `queue` that `filter` picks (ready and/or
    /// delayed, of one task or all) as REVOKED, "purged": they never run,
    /// and a waiter learns it at once. Running jobs are not touched (see
    /// [`Broker::running`] and [`Broker::revoke`]). Returns the ids purged,
    /// or with `filter.dry_run` those it would purge, changing nothing.
    async fn purge(&self, queue: &str, filter: &PurgeFilter) -> BrokerResult<Vec<JobId>>;

    /// The jobs of `queue` under a lease now (running, or prefetched by a
    /// worker), STARTED by their worker, oldest lease first.
    async fn running(&self, queue: &str) -> BrokerResult<Vec<Job>>;

    /// Up to `limit` delayed jobs of `queue` (countdowns, ETAs, retry
    /// backoffs, rate limits), soonest first, with their due times.
    async fn scheduled(&self, queue: &str, limit: usize)
    -> BrokerResult<Vec<(DateTime<Utc>, Job)>>;

    /// Asks every live worker what it holds and gathers the answers, until
    /// every worker that heard the request answered or `timeout` passes
    /// (Celery's `inspect active` / `reserved`). Sorted by worker id.
    async fn inspect(&self, timeout: Duration) -> BrokerResult<Vec<WorkerSnapshot>>;

    /// A worker's answer to the inspect request `reply`.
    async fn answer(&self, reply: &str, snapshot: &WorkerSnapshot) -> BrokerResult<()>;

    /// A page of the jobs `query` asks for, newest first, from the index
    /// of each queue (see [`list`]).
    async fn list(&self, query: &JobQuery) -> BrokerResult<JobPage>;

    /// Stores a new workflow record (running, nothing done) unless one with
    /// this id exists; says whether it stored it. `made`: when its tree
    /// was made (`Spec::created_ms`), which the record keeps.
    async fn wf_create(&self, id: JobId, spec: &str, total: u64, made: i64) -> BrokerResult<bool>;

    /// The workflow record, all of it.
    async fn wf_read(&self, id: JobId) -> BrokerResult<Option<WfStored>>;

    /// The record's compiled tree alone.
    async fn wf_spec(&self, id: JobId) -> BrokerResult<Option<String>>;

    /// Applies `marks` atomically, each set-if-absent (see
    /// [`workflow`]); a new failure mark fails a running workflow, which
    /// is then kept for `ttl`. `None` when the record is gone, or is of a
    /// tree made at another time than `made` (another workflow with this
    /// id: a key's, made again after the first one's record expired).
    async fn wf_mark(
        &self,
        id: JobId,
        made: i64,
        marks: &[WfMark],
        ttl: Duration,
    ) -> BrokerResult<Option<WfMarked>>;

    /// Fields of the record (`r:<path>`...), in the order asked.
    async fn wf_fields(&self, id: JobId, fields: &[String]) -> BrokerResult<Vec<Option<String>>>;

    /// Records the jobs launched for steps (`l:<path>`), then reads the
    /// state (a launch that raced a revoke revokes what it launched).
    async fn wf_launched(
        &self,
        id: JobId,
        launched: &[(String, JobId)],
    ) -> BrokerResult<Option<WfState>>;

    /// Ends a running workflow as `to` (kept for `ttl` from now). Returns
    /// the state after (the earlier end if it had one); `None` when gone.
    async fn wf_end(&self, id: JobId, to: WfState, ttl: Duration) -> BrokerResult<Option<WfState>>;

    /// Makes the jobs of a workflow's steps (`members`: id and queue)
    /// findable by id for `ttl` at least, before any is enqueued: their
    /// enqueue then writes no index entry (one index write per workflow,
    /// not one per launch). The embedded broker finds every job by id.
    async fn wf_index(&self, members: &[(JobId, String)], ttl: Duration) -> BrokerResult<()> {
        let _ = (members, ttl);
        Ok(())
    }

    /// Removes applied entries from `queue`'s outbox.
    async fn outbox_done(&self, queue: &str, ids: &[JobId]) -> BrokerResult<()>;

    /// Puts the entries `ids` of `queue`'s outbox (ends that failed to
    /// apply) behind the others: a due check hands them out again `after`
    /// from now, not at once, so that one that always fails cannot hold
    /// back the entries behind it. Entries already removed stay removed.
    async fn outbox_later(&self, queue: &str, ids: &[JobId], after: Duration) -> BrokerResult<()>;

    /// Entries of `queue`'s outbox at least `min_age` old, oldest first.
    async fn outbox(
        &self,
        queue: &str,
        min_age: Duration,
        limit: usize,
    ) -> BrokerResult<Vec<JobId>>;

    /// Waits until the job is final or `timeout` passes, woken by events,
    /// and by the job's expiry: a job still waiting then is shown EXPIRED
    /// ([`show_open`]) though no event says so. Returns the job as it is
    /// then (`None` if unknown).
    async fn wait(&self, id: JobId, timeout: Duration) -> BrokerResult<Option<Job>> {
        // Subscribe before reading, so that an end between the read and the
        // subscription cannot be missed.
        let _record = self.want_record(Some(id));
        let mut events = self.subscribe().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        // Woken once by the expiry: a job leased then is not shown expired,
        // and its worker's settle sends the end.
        let mut expiry_woke = false;
        loop {
            let job = self.get(id).await?;
            let wake = match &job {
                None => return Ok(None),
                Some(j) if j.state.is_final() => return Ok(job),
                Some(j) => expiry_wake(j)
                    .filter(|at| !expiry_woke && *at < deadline)
                    .unwrap_or(deadline),
            };
            match await_end(&mut events, id, wake).await {
                // Its expiry passed: read again.
                Heard::TimedOut if wake < deadline => expiry_woke = true,
                Heard::TimedOut => return self.get(id).await,
                Heard::Closed => events = self.subscribe().await?,
                // The end came with the record: no read.
                Heard::Ended(Some(rec)) => {
                    if let Ok(j) = Job::from_json(&rec)
                        && j.id == id
                        && j.state.is_final()
                    {
                        return Ok(Some(j));
                    }
                }
                Heard::Ended(None) | Heard::ReadAgain => {}
            }
        }
    }
}

/// What [`await_end`] heard.
pub enum Heard {
    /// The end came, with the final record when the event carried it.
    Ended(Option<Arc<str>>),
    /// Events may have been missed: read again.
    ReadAgain,
    /// The feed closed: subscribe again, then read.
    Closed,
    TimedOut,
}

/// Waits on `events` until `id`'s final event (a job's, or a workflow's:
/// their ids share the feed), a sign that events were missed, or
/// `deadline`. The one wait of long polls ([`Broker::wait`], workflows').
pub async fn await_end(
    events: &mut broadcast::Receiver<JobEvent>,
    id: JobId,
    deadline: tokio::time::Instant,
) -> Heard {
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return Heard::TimedOut,
            Ok(Ok(ev)) if ev.id == id && ev.state.is_final() => return Heard::Ended(ev.record),
            // Events may have been missed: read again.
            Ok(Ok(ev)) if ev.is_gap() => return Heard::ReadAgain,
            Ok(Ok(_)) => continue,
            // Lagged: read again.
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return Heard::ReadAgain,
            Ok(Err(broadcast::error::RecvError::Closed)) => return Heard::Closed,
        }
    }
}

/// When whoever waits for `job` (not final) reads it again because its
/// expiry passes: a job still waiting then is shown EXPIRED
/// ([`show_open`]), and no event says so. Now when the expiry is already
/// past; `None` for a final job or one without an expiry. The brokers
/// compare whole milliseconds: this is the first one at or after the
/// expiry. A waiter wakes for it once (a job leased past its expiry stays
/// as it is until its worker settles it).
pub fn expiry_wake(job: &Job) -> Option<tokio::time::Instant> {
    let expires = job.expires.filter(|_| !job.state.is_final())?;
    let at_ms = expires
        .timestamp_millis()
        .saturating_add(i64::from(expires.timestamp_subsec_nanos() % 1_000_000 != 0));
    let left = at_ms.saturating_sub(Utc::now().timestamp_millis()).max(0);
    tokio::time::Instant::now().checked_add(Duration::from_millis(left as u64))
}

/// The earlier of two times, either of which may be unknown.
pub(crate) fn earlier<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub(crate) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
