//! The worker: leases jobs from a broker, runs each in the sandbox, and
//! settles the outcome (result, retry with backoff, dead letter).
//!
//! One loop owns every conversation with the broker, so that settlements
//! that finish close together and the next lease go out as one call. It
//! never polls: it wakes on a broker signal (new work, an earlier delayed
//! job, another worker's lease that may run out), on its own timer for the
//! earliest due time it was told about, on a finished job, or on its
//! heartbeat / lease-extension ticks.
//!
//! Each run gets the capabilities its task binding grants
//! ([`TaskGrants`]), served by the process's [`HostServices`]: the grants of
//! the binding that bound the job's module (a job keeps the module it was
//! enqueued with, and so the grants that came with it; see
//! [`Worker::new`]). `jobs.enqueue` goes through a [`Producer`] and records
//! the running job as the child's parent and the children on the parent.
//!
//! The worker never touches Redis itself (that is the broker). It counts
//! every job that ends in `runner_jobs_total{queue,task,outcome}` and
//! `runner_job_seconds{queue,task}` (the `metrics` facade; whoever runs the
//! process installs a recorder).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Instrument as _;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::queue::{
    Broker, BrokerError, Completion, Delivery, FailureKind, JobFailure, JobId, JobState, Lease,
    Producer, Progress, SettleRequest, Settlement, Signal, WorkerInfo,
};
use crate::registry::{Registry, RegistryError};
use crate::sandbox::host::jobs::ChildJobs;
use crate::sandbox::host::{HostServices, JobEnqueuer, TaskGrants};
use crate::sandbox::{CancelToken, JobInfo, LoadedModule, Outcome, RunLimits, RunRequest, Sandbox};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub queues: Vec<String>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Jobs leased ahead of a free slot, so that the next job is at hand
    /// when one ends (they count as STARTED and their leases are kept).
    pub prefetch: usize,
    /// How long a lease lasts without extension; extended every third of it.
    pub lease: Duration,
    pub heartbeat: Duration,
    /// On shutdown, how long running jobs may finish before they are
    /// stopped and handed back.
    pub grace: Duration,
    /// Even without signals, look at every queue this often (a safety net
    /// for a lost pub/sub message; costs a few commands per period).
    pub safety_check: Duration,
    /// A job redelivered more often than this (its workers keep dying) fails.
    pub max_redeliveries: u32,
    /// Limits of a job that sets none.
    pub default_limits: RunLimits,
    /// Identifies the worker in leases and listings; generated when `None`.
    pub id: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec![crate::queue::client::DEFAULT_QUEUE.to_string()],
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            prefetch: 0,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(60),
            grace: Duration::from_secs(30),
            safety_check: Duration::from_secs(15 * 60),
            max_redeliveries: 5,
            default_limits: RunLimits::default(),
            id: None,
        }
    }
}

/// Counters of one worker's life, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub processed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
    pub handed_back: u64,
}

pub struct Worker {
    broker: Arc<dyn Broker>,
    registry: Arc<dyn Registry>,
    sandbox: Sandbox,
    services: HostServices,
    producer: Producer,
    cfg: WorkerConfig,
    id: String,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

impl Worker {
    /// A worker leasing jobs from `broker` and resolving modules and task
    /// bindings in `registry`.
    ///
    /// `services` are the process's host services (built once from
    /// `[host]` with [`HostServices::from_config`]; `HostServices::default()`
    /// for none). Each run reaches them only as far as its grants allow:
    /// the grants of the binding of the job's task whose module is the
    /// job's module (the current binding, or the newest earlier one in the
    /// registry's history; none for a job enqueued by module hash). A
    /// re-bind to another module applies to the jobs enqueued after it at
    /// once; new grants for the same module within
    /// [`GRANTS_CACHE_FOR`].
    ///
    /// `jobs.enqueue` enqueues through a [`Producer`] on `broker` and
    /// `registry`; give [`Worker::with_producer`] one that carries the
    /// queues' rate limits.
    pub fn new(
        broker: Arc<dyn Broker>,
        registry: Arc<dyn Registry>,
        sandbox: Sandbox,
        services: HostServices,
        cfg: WorkerConfig,
    ) -> Self {
        let id = cfg.id.clone().unwrap_or_else(|| {
            // `|` separates the parts of a lease; keep it out of the id.
            let host: String = hostname().chars().filter(|c| *c != '|').collect();
            format!(
                "{host}-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            )
        });
        Worker {
            producer: Producer::new(broker.clone(), registry.clone()),
            broker,
            registry,
            sandbox,
            services,
            cfg,
            id,
        }
    }

    /// Child jobs (`jobs.enqueue`) go through `producer` (e.g. one with the
    /// configured queue rate limits) instead of a plain one.
    pub fn with_producer(mut self, producer: Producer) -> Self {
        self.producer = producer;
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until `shutdown` resolves, then stops fetching, lets running
    /// jobs finish within the grace period, hands back the rest and returns.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<WorkerStats> {
        for q in &self.cfg.queues {
            crate::queue::job::validate_queue_name(q)?;
        }
        // Listed (`inspect queues`) even before the first job arrives.
        for q in &self.cfg.queues {
            if let Err(e) = self.broker.register_queue(q).await {
                tracing::warn!(queue = %q, error = %e, "cannot register the queue yet");
            }
        }
        let signals = loop {
            match self.broker.signals(&self.cfg.queues).await {
                Ok(s) => break s,
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(error = %e, "broker unreachable at start; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let ctx = Arc::new(RunCtx {
            broker: self.broker.clone(),
            registry: self.registry.clone(),
            sandbox: self.sandbox.clone(),
            services: self.services.clone(),
            producer: self.producer.clone(),
            cfg: self.cfg.clone(),
            modules: Mutex::new(HashMap::new()),
            grants: std::sync::Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
        });
        let mut lp = Loop {
            ctx,
            id: self.id.clone(),
            started_at: Utc::now(),
            queues: self
                .cfg
                .queues
                .iter()
                .map(|q| {
                    (
                        q.clone(),
                        QueueView {
                            maybe_work: true,
                            due_check: true,
                            next_due: None,
                            orphan_check: None,
                        },
                    )
                })
                .collect(),
            order: self.cfg.queues.clone(),
            held: HashMap::new(),
            buffer: VecDeque::new(),
            running: JoinSet::new(),
            pending: HashMap::new(),
            pending_since: HashMap::new(),
            stats: WorkerStats::default(),
            outage: None,
        };
        lp.run(signals, shutdown).await
    }
}

/// What a running job needs, shared by every job of the worker.
struct RunCtx {
    broker: Arc<dyn Broker>,
    registry: Arc<dyn Registry>,
    sandbox: Sandbox,
    services: HostServices,
    producer: Producer,
    cfg: WorkerConfig,
    modules: Mutex<HashMap<String, Arc<LoadedModule>>>,
    /// Grants by (task, module), with when they were read.
    grants: std::sync::Mutex<HashMap<(String, String), CachedGrants>>,
    shutting_down: AtomicBool,
}

/// The grants a (task, module) pair runs with; `None`: no binding of the
/// task ever bound that module.
#[derive(Clone)]
struct CachedGrants {
    grants: Option<Arc<TaskGrants>>,
    read_at: Instant,
}

/// How long the worker trusts the grants it read for a (task, module) pair
/// before it reads the binding again: the delay until new grants for the
/// same module reach running jobs. (A job whose module is not cached reads
/// the binding at once.)
pub const GRANTS_CACHE_FOR: Duration = Duration::from_secs(5);

/// Bounds the grants cache; past it the cache starts over.
const GRANTS_CACHE_MAX: usize = 4096;

struct QueueView {
    /// The queue may have ready jobs.
    maybe_work: bool,
    /// Move due jobs and reclaim lost leases on the next call.
    due_check: bool,
    next_due: Option<DateTime<Utc>>,
    /// When jobs leased by a call whose reply was lost come back: a due
    /// check then reclaims them (the broker leaves our own leases out of
    /// `next_due`).
    orphan_check: Option<DateTime<Utc>>,
}

struct Held {
    lease: Lease,
    cancel: CancelToken,
    started: bool,
    /// Revoked before it started: settle as REVOKED instead of running it.
    revoked: bool,
}

struct Loop {
    ctx: Arc<RunCtx>,
    id: String,
    started_at: DateTime<Utc>,
    queues: HashMap<String, QueueView>,
    order: Vec<String>,
    held: HashMap<JobId, Held>,
    buffer: VecDeque<Delivery>,
    running: JoinSet<(Delivery, Completion)>,
    pending: HashMap<String, Vec<Completion>>,
    /// When the oldest unsettled result of each queue came in.
    pending_since: HashMap<String, Instant>,
    stats: WorkerStats,
    /// Since when the broker has been unreachable.
    outage: Option<Instant>,
}

impl Loop {
    async fn run(
        &mut self,
        mut signals: mpsc::UnboundedReceiver<Signal>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<WorkerStats> {
        let cfg = self.ctx.cfg.clone();
        let mut heartbeat = tokio::time::interval(cfg.heartbeat);
        let extend_every = (cfg.lease / 3).max(Duration::from_millis(50));
        let mut extend = tokio::time::interval_at(Instant::now() + extend_every, extend_every);
        let mut safety =
            tokio::time::interval_at(Instant::now() + cfg.safety_check, cfg.safety_check);
        let mut retry_at: Option<Instant> = None;
        tokio::pin!(shutdown);
        tracing::info!(worker = %self.id, queues = ?cfg.queues, concurrency = cfg.concurrency, "worker started");

        loop {
            self.start_buffered();
            let now = Instant::now();
            if retry_at.is_none_or(|t| t <= now) {
                retry_at = None;
                if let Err(e) = self.talk().await {
                    retry_at = Some(Instant::now() + self.outage_backoff(&e));
                }
            }
            let sleep_until = self
                .next_timer()
                .map(|t| t.min(retry_at.unwrap_or(t)))
                .or(retry_at);
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    if let Ok((d, c)) = done { self.finished(d, c); }
                    // Take every other job that ended meanwhile: one settle call for all.
                    while let Some(Ok((d, c))) = self.running.try_join_next() {
                        self.finished(d, c);
                    }
                }
                s = signals.recv() => match s {
                    Some(s) => self.on_signal(s),
                    None => {
                        signals = self.resubscribe().await?;
                    }
                },
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = extend.tick(), if !self.held.is_empty() => self.extend().await,
                _ = safety.tick() => {
                    for q in self.queues.values_mut() {
                        q.due_check = true;
                        q.maybe_work = true;
                    }
                }
                _ = sleep_until_opt(sleep_until) => {
                    let now = Utc::now();
                    for q in self.queues.values_mut() {
                        if q.next_due.is_some_and(|t| t <= now) {
                            q.next_due = None;
                            q.due_check = true;
                        }
                        if q.orphan_check.is_some_and(|t| t <= now) {
                            q.orphan_check = None;
                            q.due_check = true;
                        }
                    }
                }
            }
        }
        self.shut_down(extend_every).await;
        Ok(self.stats.clone())
    }

    fn capacity(&self) -> usize {
        let cfg = &self.ctx.cfg;
        (cfg.concurrency + cfg.prefetch).saturating_sub(self.held.len())
    }

    fn start_buffered(&mut self) {
        while self.running.len() < self.ctx.cfg.concurrency {
            let Some(d) = self.buffer.pop_front() else {
                break;
            };
            let Some(h) = self.held.get_mut(&d.job.id) else {
                continue;
            };
            if h.revoked {
                let c = revoked_before_start(&d);
                self.finished(d, c);
                continue;
            }
            h.started = true;
            let cancel = h.cancel.clone();
            let ctx = self.ctx.clone();
            let worker = self.id.clone();
            let span = tracing::info_span!(
                "job",
                job = %d.job.id,
                task = d.job.task.as_deref().unwrap_or(""),
                queue = %d.lease.queue,
                attempt = d.job.attempt,
            );
            self.running.spawn(
                async move {
                    let c = execute(&ctx, &d, cancel, &worker).await;
                    (d, c)
                }
                .instrument(span),
            );
        }
    }

    fn finished(&mut self, d: Delivery, c: Completion) {
        self.held.remove(&d.job.id);
        match &c.settlement {
            Settlement::Finish { job, .. } => {
                self.stats.processed += 1;
                match job.state {
                    JobState::Success => self.stats.succeeded += 1,
                    _ => self.stats.failed += 1,
                }
            }
            Settlement::Retry { .. } => {
                self.stats.processed += 1;
                self.stats.retried += 1;
            }
            Settlement::Release => self.stats.handed_back += 1,
        }
        self.pending_since
            .entry(d.lease.queue.clone())
            .or_insert_with(Instant::now);
        self.pending
            .entry(d.lease.queue.clone())
            .or_default()
            .push(c);
    }

    /// One settle call per queue that has something to say.
    async fn talk(&mut self) -> Result<(), BrokerError> {
        let shutting = self.ctx.shutting_down.load(Ordering::Relaxed);
        let n = self.order.len();
        // Rotate so that no queue is always served first.
        if n > 1 {
            self.order.rotate_left(1);
        }
        for q in self.order.clone() {
            let completions = self.pending.remove(&q).unwrap_or_default();
            let view = self.queues.get(&q);
            let due_check = view.is_some_and(|v| v.due_check) && !shutting;
            // Fetch only when the jobs at hand no longer fill the slots.
            let need_jobs = self.buffer.len() < self.ctx.cfg.concurrency;
            let want =
                if shutting || !need_jobs || !(view.is_some_and(|v| v.maybe_work) || due_check) {
                    0
                } else {
                    self.capacity()
                };
            // Results wait a little for company (one call stores many), but
            // never when the worker would otherwise sit idle.
            let batch_target = self.ctx.cfg.concurrency + self.ctx.cfg.prefetch;
            let flush = !completions.is_empty()
                && (shutting
                    || self.running.is_empty()
                    || want > 0
                    || completions.len() >= batch_target
                    || self
                        .pending_since
                        .get(&q)
                        .is_some_and(|t| t.elapsed() >= FLUSH_AFTER));
            if !flush && want == 0 && !due_check {
                if !completions.is_empty() {
                    self.pending.insert(q.clone(), completions);
                }
                continue;
            }
            self.pending_since.remove(&q);
            let req = SettleRequest {
                queue: q.clone(),
                worker: self.id.clone(),
                completions: completions.clone(),
                fetch: want,
                due_check,
                holds_leases: self.held.values().any(|h| h.lease.queue == q),
                lease: self.ctx.cfg.lease,
            };
            let reply = match self.ctx.broker.settle(req).await {
                Ok(r) => r,
                Err(e) => {
                    // Keep the results: they are settled when the broker is back.
                    self.pending
                        .entry(q.clone())
                        .or_default()
                        .extend(completions);
                    self.pending_since
                        .entry(q.clone())
                        .or_insert_with(Instant::now);
                    // The call may have leased jobs whose reply was lost: they
                    // are ours, unknown to us, and come back once the lease
                    // runs out, so look again then.
                    let at = Utc::now()
                        + chrono::Duration::milliseconds(
                            self.ctx.cfg.lease.as_millis() as i64 + 100,
                        );
                    if let Some(v) = self.queues.get_mut(&q) {
                        v.orphan_check = Some(v.orphan_check.map_or(at, |d| d.min(at)));
                    }
                    return Err(e);
                }
            };
            self.recovered();
            for id in &reply.stale {
                tracing::warn!(job = %id, "lease was lost before the result was stored; another run owns it");
            }
            if let Some(v) = self.queues.get_mut(&q) {
                if due_check {
                    v.due_check = false;
                    v.next_due = reply.next_due;
                }
                if let Some(t) = reply.deferred_until {
                    v.next_due = Some(v.next_due.map_or(t, |d| d.min(t)));
                }
                // Only a fetch that took fewer entries than asked says the
                // queue is empty: jobs deferred by a rate limit (or dropped
                // as expired) were taken too, and more may wait behind them.
                if want > 0 {
                    v.maybe_work = reply.popped >= want;
                }
            }
            for d in reply.deliveries {
                self.held.insert(
                    d.job.id,
                    Held {
                        lease: d.lease.clone(),
                        cancel: CancelToken::new(),
                        started: false,
                        revoked: false,
                    },
                );
                self.buffer.push_back(d);
            }
            self.start_buffered();
        }
        Ok(())
    }

    fn outage_backoff(&mut self, e: &BrokerError) -> Duration {
        let since = *self.outage.get_or_insert_with(|| {
            tracing::warn!(error = %e, "broker unreachable; keeping results and retrying with backoff");
            Instant::now()
        });
        let secs = since.elapsed().as_secs_f64();
        Duration::from_millis((100.0 * 2f64.powf(secs.min(6.0))).min(5000.0) as u64)
    }

    fn recovered(&mut self) {
        if let Some(since) = self.outage.take() {
            tracing::info!(after = ?since.elapsed(), "broker reachable again");
            for v in self.queues.values_mut() {
                v.due_check = true;
                v.maybe_work = true;
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let flush = self.pending_since.values().min().map(|t| *t + FLUSH_AFTER);
        let due = self
            .queues
            .values()
            .flat_map(|v| [v.next_due, v.orphan_check])
            .flatten()
            .min()
            .map(|earliest| {
                let ms = (earliest - Utc::now()).num_milliseconds().max(0) as u64;
                Instant::now() + Duration::from_millis(ms)
            });
        match (flush, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_signal(&mut self, s: Signal) {
        match s {
            Signal::Work { queue } => {
                if let Some(v) = self.queues.get_mut(&queue) {
                    v.maybe_work = true;
                }
            }
            Signal::WakeAt { queue, at } => {
                if let Some(v) = self.queues.get_mut(&queue) {
                    v.next_due = Some(v.next_due.map_or(at, |d| d.min(at)));
                }
            }
            Signal::LeaseUntil { queue, worker, at } => {
                if worker != self.id
                    && let Some(v) = self.queues.get_mut(&queue)
                {
                    // A little after the deadline, so the lease has surely run out.
                    let at = at + chrono::Duration::milliseconds(50);
                    v.next_due = Some(v.next_due.map_or(at, |d| d.min(at)));
                }
            }
            Signal::Revoke { id, terminate } => {
                if let Some(h) = self.held.get_mut(&id) {
                    if !h.started {
                        h.revoked = true;
                    } else if terminate {
                        h.cancel.cancel();
                    }
                }
            }
            Signal::Reconnected => {
                for v in self.queues.values_mut() {
                    v.due_check = true;
                    v.maybe_work = true;
                }
            }
        }
    }

    async fn resubscribe(&mut self) -> anyhow::Result<mpsc::UnboundedReceiver<Signal>> {
        loop {
            match self.ctx.broker.signals(&self.ctx.cfg.queues).await {
                Ok(s) => return Ok(s),
                Err(e) if e.is_unavailable() => tokio::time::sleep(Duration::from_secs(1)).await,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            id: self.id.clone(),
            hostname: hostname(),
            pid: std::process::id(),
            queues: self.ctx.cfg.queues.clone(),
            concurrency: self.ctx.cfg.concurrency,
            started_at: self.started_at,
            last_seen: Utc::now(),
            running: self
                .held
                .iter()
                .filter(|(_, h)| h.started)
                .map(|(id, _)| *id)
                .collect(),
            processed: self.stats.processed,
            failed: self.stats.failed,
        }
    }

    async fn heartbeat(&mut self) {
        let ttl = self.ctx.cfg.heartbeat * 3;
        if let Err(e) = self.ctx.broker.heartbeat(&self.info(), ttl).await {
            tracing::debug!(error = %e, "heartbeat not stored");
        }
    }

    async fn extend(&mut self) {
        let leases: Vec<Lease> = self.held.values().map(|h| h.lease.clone()).collect();
        match self.ctx.broker.extend(&leases, self.ctx.cfg.lease).await {
            Ok(lost) => {
                for id in lost {
                    if let Some(h) = self.held.get(&id) {
                        tracing::warn!(job = %id, "lease lost (redelivered elsewhere); stopping this run");
                        h.cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "lease extension failed; retrying next tick"),
        }
    }

    async fn shut_down(&mut self, extend_every: Duration) {
        tracing::info!(worker = %self.id, running = self.running.len(), "shutting down: no more fetching");
        self.ctx.shutting_down.store(true, Ordering::Relaxed);
        // Leased but never started: hand back at once.
        while let Some(d) = self.buffer.pop_front() {
            let c = Completion {
                lease: d.lease.clone(),
                settlement: Settlement::Release,
                had_progress: false,
            };
            self.finished(d, c);
        }
        let _ = self.talk().await;
        let deadline = Instant::now() + self.ctx.cfg.grace;
        let mut extend = tokio::time::interval_at(Instant::now() + extend_every, extend_every);
        let mut cancelled = false;
        while !self.running.is_empty() {
            tokio::select! {
                Some(done) = self.running.join_next() => {
                    if let Ok((d, c)) = done { self.finished(d, c); }
                    let _ = self.talk().await;
                }
                _ = extend.tick() => self.extend().await,
                _ = tokio::time::sleep_until(deadline), if !cancelled => {
                    tracing::warn!(running = self.running.len(), "grace period over: stopping and handing back the rest");
                    for h in self.held.values() { h.cancel.cancel(); }
                    cancelled = true;
                }
            }
        }
        for _ in 0..50 {
            if self.pending.values().all(|v| v.is_empty()) {
                break;
            }
            if self.talk().await.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let _ = self.ctx.broker.worker_gone(&self.id).await;
        tracing::info!(worker = %self.id, stats = ?self.stats, "worker stopped");
    }
}

/// A result waits at most this long for others to be stored with it.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

/// Progress is stored at most this often per job...
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// ...and not before the job has run this long.
const FIRST_PROGRESS_AFTER: Duration = Duration::from_millis(100);

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn revoked_before_start(d: &Delivery) -> Completion {
    let mut job = d.job.clone();
    job.state = JobState::Revoked;
    job.finished_at = Some(Utc::now());
    job.error = Some(JobFailure {
        kind: "revoked".into(),
        message: "revoked before it started".into(),
    });
    Completion {
        lease: d.lease.clone(),
        settlement: Settlement::Finish { job, dead: false },
        had_progress: false,
    }
}

fn finish(
    d: &Delivery,
    state: JobState,
    result: Option<String>,
    error: Option<JobFailure>,
    dead: bool,
) -> Settlement {
    let mut job = d.job.clone();
    job.state = state;
    job.result = result;
    job.error = error;
    job.finished_at = Some(Utc::now());
    job.started_at = Some(d.leased_at);
    Settlement::Finish { job, dead }
}

/// A retry per the job's policy, or the final FAILURE when retries are spent.
fn retry_or_fail(d: &Delivery, kind: &str, message: String) -> Settlement {
    let job = &d.job;
    let retries_done = job.attempt.saturating_sub(1);
    if retries_done < job.retry.max_retries {
        let delay = job.retry.backoff(job.attempt);
        let due = Utc::now() + chrono::Duration::milliseconds(delay.as_millis() as i64);
        let error = Some(JobFailure {
            kind: kind.into(),
            message: message.clone(),
        });
        let mut next = job.clone();
        next.state = JobState::Retry;
        next.attempt += 1;
        next.eta = Some(due);
        next.error = error.clone();
        next.worker = None;
        next.started_at = None;
        next.progress = None;
        next.redeliveries = 0;
        let mut if_revoked = job.clone();
        if_revoked.state = JobState::Revoked;
        if_revoked.finished_at = Some(Utc::now());
        if_revoked.error = Some(JobFailure {
            kind: "revoked".into(),
            message: format!("revoked; last attempt ended: {message}"),
        });
        Settlement::Retry {
            job: next,
            due,
            if_revoked,
        }
    } else {
        let message = if job.retry.max_retries > 0 {
            format!(
                "{message} (gave up after {} retries)",
                job.retry.max_retries
            )
        } else {
            message
        };
        finish(
            d,
            JobState::Failure,
            None,
            Some(JobFailure {
                kind: kind.into(),
                message,
            }),
            true,
        )
    }
}

fn failure(d: &Delivery, kind: FailureKind, name: &str, message: String) -> Settlement {
    if d.job.retry.retries(kind) {
        retry_or_fail(d, name, message)
    } else {
        finish(
            d,
            JobState::Failure,
            None,
            Some(JobFailure {
                kind: name.into(),
                message,
            }),
            true,
        )
    }
}

/// Runs one delivery to its settlement.
async fn execute(ctx: &RunCtx, d: &Delivery, cancel: CancelToken, worker: &str) -> Completion {
    let started = Instant::now();
    let had_progress = Arc::new(AtomicBool::new(false));
    let settlement = run_job(ctx, d, cancel, worker, had_progress.clone()).await;
    count_job(d, &settlement, started.elapsed());
    Completion {
        lease: d.lease.clone(),
        settlement,
        had_progress: had_progress.load(Ordering::Relaxed),
    }
}

/// `runner_jobs_total{queue,task,outcome}` and `runner_job_seconds{queue,task}`
/// for one delivery that ended. `task` is empty for a job enqueued by module
/// hash; `outcome` is the final state (`success`, `failure`, `revoked`,
/// `expired`), `retry`, or `released` (handed back on shutdown).
fn count_job(d: &Delivery, settlement: &Settlement, took: Duration) {
    let outcome = match settlement {
        Settlement::Finish { job, .. } => match job.state {
            JobState::Success => "success",
            JobState::Failure => "failure",
            JobState::Revoked => "revoked",
            JobState::Expired => "expired",
            // Not a final state; never settled with Finish.
            _ => "other",
        },
        Settlement::Retry { .. } => "retry",
        Settlement::Release => "released",
    };
    let queue = d.lease.queue.clone();
    let task = d.job.task.clone().unwrap_or_default();
    metrics::counter!(
        "runner_jobs_total",
        "queue" => queue.clone(),
        "task" => task.clone(),
        "outcome" => outcome,
    )
    .increment(1);
    metrics::histogram!("runner_job_seconds", "queue" => queue, "task" => task)
        .record(took.as_secs_f64());
}

/// The grants a job runs with: those of the binding of its task that bound
/// its module. `None` when the job has no task, or no binding of the task
/// ever bound that module.
async fn grants_for(
    ctx: &RunCtx,
    task: Option<&str>,
    module: &str,
) -> Result<Option<Arc<TaskGrants>>, RegistryError> {
    let Some(task) = task else {
        return Ok(None);
    };
    let key = (task.to_string(), module.to_string());
    if let Some(cached) = lock(&ctx.grants).get(&key)
        && cached.read_at.elapsed() < GRANTS_CACHE_FOR
    {
        return Ok(cached.grants.clone());
    }
    let current = ctx.registry.task(task).await?;
    let binding = match current {
        Some(b) if b.module == module => Some(b),
        _ => ctx
            .registry
            .history(task)
            .await?
            .into_iter()
            .find(|b| b.module == module),
    };
    let grants = binding.map(|b| Arc::new(b.grants));
    let mut cache = lock(&ctx.grants);
    if cache.len() >= GRANTS_CACHE_MAX {
        cache.clear();
    }
    cache.insert(
        key,
        CachedGrants {
            grants: grants.clone(),
            read_at: Instant::now(),
        },
    );
    Ok(grants)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn resolve(ctx: &RunCtx, d: &Delivery) -> Result<(String, Arc<LoadedModule>), Settlement> {
    let hash = match &d.job.module {
        Some(h) => h.clone(),
        None => match &d.job.task {
            Some(t) => match ctx.registry.task(t).await {
                Ok(Some(b)) => b.module,
                Ok(None) => {
                    return Err(finish(
                        d,
                        JobState::Failure,
                        None,
                        Some(JobFailure {
                            kind: "unknown_task".into(),
                            message: format!("task {t:?} is not bound to a module"),
                        }),
                        true,
                    ));
                }
                Err(e) => return Err(retry_or_fail(d, "infrastructure", format!("registry: {e}"))),
            },
            None => {
                return Err(finish(
                    d,
                    JobState::Failure,
                    None,
                    Some(JobFailure {
                        kind: "invalid".into(),
                        message: "job has neither task nor module".into(),
                    }),
                    true,
                ));
            }
        },
    };
    if let Some(m) = ctx.modules.lock().await.get(&hash) {
        return Ok((hash, m.clone()));
    }
    let bytes = match ctx.registry.module(&hash).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(finish(
                d,
                JobState::Failure,
                None,
                Some(JobFailure {
                    kind: "unknown_module".into(),
                    message: format!("module {hash} is not in the registry"),
                }),
                true,
            ));
        }
        Err(e) => return Err(retry_or_fail(d, "infrastructure", format!("registry: {e}"))),
    };
    let sandbox = ctx.sandbox.clone();
    // Compiling takes real CPU time: keep it off the executor.
    let loaded = tokio::task::spawn_blocking(move || sandbox.load(&bytes)).await;
    match loaded {
        Ok(Ok(m)) => {
            ctx.modules.lock().await.insert(hash.clone(), m.clone());
            Ok((hash, m))
        }
        Ok(Err(e)) => Err(finish(
            d,
            JobState::Failure,
            None,
            Some(JobFailure {
                kind: "invalid_module".into(),
                message: e.to_string(),
            }),
            true,
        )),
        Err(e) => Err(retry_or_fail(
            d,
            "infrastructure",
            format!("loading the module: {e}"),
        )),
    }
}

async fn run_job(
    ctx: &RunCtx,
    d: &Delivery,
    cancel: CancelToken,
    _worker: &str,
    had_progress: Arc<AtomicBool>,
) -> Settlement {
    let job = &d.job;
    if job.is_expired_at(Utc::now()) {
        return finish(
            d,
            JobState::Expired,
            None,
            Some(JobFailure {
                kind: "expired".into(),
                message: "the job expired before it could run".into(),
            }),
            false,
        );
    }
    if d.lease.redeliveries > ctx.cfg.max_redeliveries {
        return finish(
            d,
            JobState::Failure,
            None,
            Some(JobFailure {
                kind: "lost_lease".into(),
                message: format!(
                    "its worker was lost {} times (more than {} redeliveries)",
                    d.lease.redeliveries, ctx.cfg.max_redeliveries
                ),
            }),
            true,
        );
    }
    let (hash, module) = match resolve(ctx, d).await {
        Ok(m) => m,
        Err(s) => return s,
    };
    let grants = match grants_for(ctx, job.task.as_deref(), &hash).await {
        Ok(g) => g,
        Err(e) => return retry_or_fail(d, "infrastructure", format!("registry: {e}")),
    };
    let children = Arc::new(ChildJobs::new(ctx.producer.clone(), job.id));

    // Progress: the sink must not block, so it hands reports to a task that
    // stores the latest one at most every 200 ms.
    let (ptx, mut prx) = mpsc::unbounded_channel::<crate::sandbox::Progress>();
    let run_over = CancelToken::new();
    let forward = {
        let broker = ctx.broker.clone();
        let lease = d.lease.clone();
        let flag = had_progress.clone();
        let run_over = run_over.clone();
        tokio::spawn(async move {
            // A job that ends within the first 100 ms stores no progress at
            // all: its last report goes into its final record instead.
            let mut last = Instant::now() - (PROGRESS_EVERY - FIRST_PROGRESS_AFTER);
            loop {
                let mut p = tokio::select! {
                    next = prx.recv() => match next {
                        Some(p) => p,
                        None => break,
                    },
                    _ = run_over.cancelled() => break,
                };
                // Wait out the throttle, keeping only the newest report, and
                // stop at once when the run ends (the job must not wait).
                let sleep = tokio::time::sleep(PROGRESS_EVERY.saturating_sub(last.elapsed()));
                tokio::pin!(sleep);
                let mut ended = false;
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        next = prx.recv() => match next {
                            Some(newer) => p = newer,
                            None => {
                                ended = true;
                                break;
                            }
                        },
                        _ = run_over.cancelled() => {
                            ended = true;
                            break;
                        }
                    }
                }
                if ended {
                    break;
                }
                flag.store(true, Ordering::Relaxed);
                let p = Progress {
                    done: p.done,
                    total: p.total,
                    message: p.message,
                };
                if let Err(e) = broker.progress(&lease, &p).await {
                    tracing::debug!(error = %e, "progress not stored");
                }
                last = Instant::now();
            }
        })
    };
    let no_grants = TaskGrants::default();
    let mut host = ctx.services.env_for(
        job.task.as_deref().unwrap_or(""),
        grants.as_deref().unwrap_or(&no_grants),
        Some(children.clone() as Arc<dyn JobEnqueuer>),
    );
    host.progress = Some(Arc::new(move |p: &crate::sandbox::Progress| {
        let _ = ptx.send(p.clone());
    }));

    let mut limits = ctx.cfg.default_limits.clone();
    if let Some(ms) = job.limits.time_limit_ms {
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(f) = job.limits.fuel {
        limits.fuel = Some(f);
    }
    if let Some(m) = job.limits.memory_bytes {
        limits.memory_bytes = m;
    }
    let req = RunRequest {
        input: job.input.clone(),
        limits,
        job: JobInfo {
            id: job.id.to_string(),
            attempt: job.attempt,
            max_retries: job.retry.max_retries,
            queue: job.queue.clone(),
            task: job.task.clone().unwrap_or_default(),
            schedule: job.schedule.clone(),
            scheduled_for: job.scheduled_for.map(|t| t.to_rfc3339()),
        },
        host,
        cancel,
    };
    let report = ctx.sandbox.run(&module, req).await;
    // The run is over (its sink may outlive it inside the sandbox a little):
    // the forwarder stops at once; the last report goes into the record.
    run_over.cancel();
    let _ = forward.await;
    let mut settlement = match report.outcome {
        Outcome::Success(out) => finish(d, JobState::Success, Some(out), None, false),
        Outcome::Retry(m) => retry_or_fail(d, "retry", m),
        Outcome::HostFailure(m) => retry_or_fail(d, "infrastructure", m),
        Outcome::Fail(m) => failure(d, FailureKind::Fail, "fail", m),
        Outcome::FuelExhausted => failure(
            d,
            FailureKind::FuelExhausted,
            "fuel_exhausted",
            "fuel exhausted".into(),
        ),
        Outcome::MemoryLimit => failure(
            d,
            FailureKind::MemoryLimit,
            "memory_limit",
            "memory limit reached".into(),
        ),
        Outcome::TimeLimit => failure(
            d,
            FailureKind::TimeLimit,
            "time_limit",
            "time limit reached".into(),
        ),
        Outcome::Trap { message, backtrace } => {
            let m = match backtrace {
                Some(b) => format!("{message}\n{b}"),
                None => message,
            };
            failure(d, FailureKind::Trap, "trap", m)
        }
        Outcome::InvalidOutput(m) => failure(d, FailureKind::InvalidOutput, "invalid_output", m),
        Outcome::Revoked => {
            if ctx.shutting_down.load(Ordering::Relaxed) {
                // Stopped by our own shutdown, not by a revoke: give it back.
                Settlement::Release
            } else {
                finish(
                    d,
                    JobState::Revoked,
                    None,
                    Some(JobFailure {
                        kind: "revoked".into(),
                        message: "terminated by revoke".into(),
                    }),
                    false,
                )
            }
        }
    };
    // The children this attempt enqueued go on the parent's record (the
    // final one, or the retry's, to be completed by later attempts).
    let enqueued = children.children();
    if !enqueued.is_empty() {
        let record = match &mut settlement {
            Settlement::Finish { job, .. } | Settlement::Retry { job, .. } => Some(job),
            Settlement::Release => None,
        };
        if let Some(record) = record {
            for id in enqueued {
                if !record.children.contains(&id) {
                    record.children.push(id);
                }
            }
        }
    }
    if let Settlement::Finish { job, .. } = &mut settlement
        && let Some(p) = report.last_progress
    {
        job.progress = Some(Progress {
            done: p.done,
            total: p.total,
            message: p.message,
        });
    }
    settlement
}
