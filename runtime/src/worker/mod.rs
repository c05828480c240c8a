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
//!
//! # Layout
//!
//! - `dispatch`: the [`Dispatcher`](dispatch::Dispatcher), the loop that
//!   talks to the broker (leases, settlements, extensions, heartbeats,
//!   signals) and starts jobs in free slots;
//! - `run`: running one job: its module and grants, its host environment,
//!   the sandbox;
//! - `settle`: how a run's outcome becomes a settlement (final record,
//!   retry with backoff, dead letter); pure functions;
//! - `progress`: forwarding a running job's progress to the broker,
//!   throttled.

mod dispatch;
pub mod prefetch;
mod progress;
mod run;
mod settle;
pub mod slots;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::producer::Producer;
use crate::queue::Broker;
use crate::registry::{ModuleHash, Registry, TaskGrants};
use crate::sandbox::host::HostServices;
use crate::sandbox::{LoadedModule, RunLimits, Sandbox};
use dispatch::Dispatcher;
pub use prefetch::Prefetch;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub queues: Vec<String>,
    /// Jobs run at once: exactly this many, or at first when
    /// `max_concurrency` is more.
    pub concurrency: usize,
    /// Adapt the jobs run at once between `concurrency` and this, from
    /// how busy the slots and the cores are (`slots.rs`); `None`: fixed.
    pub max_concurrency: Option<usize>,
    /// Jobs leased ahead of a free slot, so that the next job is at hand
    /// when one ends (they count as STARTED and their leases are kept):
    /// adaptive by default (`prefetch.rs`).
    pub prefetch: Prefetch,
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
            queues: vec![crate::queue::DEFAULT_QUEUE.to_string()],
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            max_concurrency: None,
            prefetch: Prefetch::Adaptive,
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

impl WorkerConfig {
    /// Sets the slots: `concurrency` fixes them (unless `max` is given
    /// too); without it they adapt from one per core (but no more than
    /// `max`) up to `max`, by default [`slots::default_max`] (`slots.rs`).
    pub fn set_slots(&mut self, concurrency: Option<usize>, max: Option<usize>) {
        match (concurrency, max) {
            (Some(c), _) => self.concurrency = c,
            // A maximum below the core count caps the start too.
            (None, Some(max)) => self.concurrency = self.concurrency.min(max.max(1)),
            (None, None) => {}
        }
        self.max_concurrency = match (concurrency, max) {
            (_, Some(max)) => Some(max.max(self.concurrency)),
            (None, None) => Some(slots::default_max(self.concurrency)),
            (Some(_), None) => None,
        };
    }

    /// The most jobs it may run at once (what its sandbox's pools are
    /// sized for).
    pub fn most_slots(&self) -> usize {
        self.max_concurrency
            .unwrap_or(self.concurrency)
            .max(self.concurrency)
    }

    /// Its slots as the commands print them: `4`, or `2 to 16, adaptive`.
    pub fn slots_label(&self) -> String {
        match self.max_concurrency {
            Some(max) if max > self.concurrency => {
                format!("{} to {max}, adaptive", self.concurrency)
            }
            _ => self.concurrency.to_string(),
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
    consuming: tokio::sync::watch::Sender<bool>,
}

pub(super) fn hostname() -> String {
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
            consuming: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Reports in `flag` whether it takes jobs: true from its subscription
    /// to its queues until it starts stopping (what a worker's `/readyz`
    /// says, and when it tells systemd it is ready).
    pub fn with_consuming_flag(mut self, flag: tokio::sync::watch::Sender<bool>) -> Self {
        self.consuming = flag;
        self
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
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<WorkerStats> {
        for q in &self.cfg.queues {
            crate::queue::partition::validate_queue_or_partition(q)?;
        }
        self.cfg.queues = self.with_stranded_partitions().await;
        // Listed (`inspect queues`) even before the first job arrives.
        for q in &self.cfg.queues {
            if let Err(e) = self.broker.register_queue(q).await {
                tracing::warn!(queue = %q, error = %e, "cannot register the queue yet");
            }
        }
        tokio::pin!(shutdown);
        // Told to stop before it could subscribe: nothing was leased, there
        // is nothing to hand back.
        let Some(signals) =
            subscribe(&*self.broker, &self.id, &self.cfg.queues, shutdown.as_mut()).await?
        else {
            return Ok(WorkerStats::default());
        };
        let ctx = Arc::new(RunCtx {
            broker: self.broker.clone(),
            registry: self.registry.clone(),
            sandbox: self.sandbox.clone(),
            services: self.services.clone(),
            producer: self.producer.clone(),
            workflows: crate::workflow::Workflows::new(self.producer.clone()),
            cfg: self.cfg.clone(),
            loads: std::sync::Mutex::new(HashMap::new()),
            grants: std::sync::Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            busy_ns: Arc::default(),
            loading: Arc::default(),
        });
        let consuming = self.consuming.clone();
        consuming.send_replace(true);
        let stopping = consuming.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.send_replace(false);
        };
        let stats = Dispatcher::new(ctx, self.id.clone())
            .run(signals, shutdown)
            .await;
        consuming.send_replace(false);
        stats
    }
}

impl Worker {
    /// Its queues, plus the partitions of those queues that hold jobs but
    /// that its config does not name: a partition count that was lowered
    /// (`[queues.x] partitions`), or a process whose config lacks it, would
    /// otherwise leave their jobs to nobody. Each is named in a warning:
    /// every process should have the same `[queues.*]`.
    async fn with_stranded_partitions(&self) -> Vec<String> {
        use crate::queue::partition::queue_of;
        let mut queues = self.cfg.queues.clone();
        let known = match self.broker.queues().await {
            Ok(known) => known,
            // Unreachable for now: the signal loop below waits for it.
            Err(_) => return queues,
        };
        for q in known {
            let base = queue_of(&q.name);
            let (waiting, running) = q.depth();
            if base != q.name
                && waiting + running > 0
                && queues.iter().any(|c| c == base)
                && !queues.contains(&q.name)
            {
                tracing::warn!(
                    partition = %q.name,
                    waiting,
                    running,
                    "a partition of {base} that this worker's config does not name holds jobs: \
                     consuming it too (check [queues.{base}] partitions on every process)"
                );
                queues.push(q.name);
            }
        }
        queues
    }
}

/// Subscribes `worker` to the signals of `queues` (at start, and again when
/// the subscription ended), retrying every second while the broker is
/// unreachable: said once per outage, and once more when it worked. `None`
/// if `shutdown` resolves first: a worker told to stop while Redis is away
/// stops then, not once Redis is back.
async fn subscribe(
    broker: &dyn Broker,
    worker: &str,
    queues: &[String],
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Option<tokio::sync::mpsc::UnboundedReceiver<crate::queue::Signal>>> {
    let mut outage: Option<Instant> = None;
    loop {
        let e = tokio::select! {
            biased;
            () = shutdown.as_mut() => return Ok(None),
            r = broker.signals(worker, queues) => match r {
                Ok(signals) => {
                    if let Some(since) = outage {
                        tracing::info!(after = ?since.elapsed(), "subscribed to the queues' signals");
                    }
                    return Ok(Some(signals));
                }
                Err(e) if e.is_unavailable() => e,
                Err(e) => return Err(e.into()),
            },
        };
        if outage.is_none() {
            tracing::warn!(error = %e, "cannot subscribe to the queues' signals: the broker is unreachable; retrying");
            outage = Some(Instant::now());
        }
        tokio::select! {
            biased;
            () = shutdown.as_mut() => return Ok(None),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What a running job needs, shared by every job of the worker.
pub(super) struct RunCtx {
    pub(super) broker: Arc<dyn Broker>,
    pub(super) registry: Arc<dyn Registry>,
    pub(super) sandbox: Sandbox,
    pub(super) services: HostServices,
    pub(super) producer: Producer,
    /// Advances the workflows of the members this worker ends.
    pub(super) workflows: crate::workflow::Workflows,
    pub(super) cfg: WorkerConfig,
    /// The module loads under way: runs that need a module while it loads
    /// wait for that load instead of compiling it again. Once loaded, the
    /// sandbox keeps it (with the modules loaded at start-up), and the
    /// entry goes.
    pub(super) loads: std::sync::Mutex<HashMap<ModuleHash, Arc<OnceCell<Arc<LoadedModule>>>>>,
    /// Grants by (task, module), with when they were read.
    pub(super) grants: std::sync::Mutex<HashMap<(String, ModuleHash), CachedGrants>>,
    pub(super) shutting_down: AtomicBool,
    /// Nanoseconds the runs spent working rather than waiting: polled
    /// ([`slots::Timed`]) or compiling their module (`slots.rs`).
    pub(super) busy_ns: Arc<std::sync::atomic::AtomicU64>,
    /// Runs compiling their module right now (`slots.rs`).
    pub(super) loading: Arc<std::sync::atomic::AtomicUsize>,
}

/// The grants a (task, module) pair runs with; `None`: no binding of the
/// task ever bound that module.
#[derive(Clone)]
pub(super) struct CachedGrants {
    pub(super) grants: Option<Arc<TaskGrants>>,
    pub(super) read_at: Instant,
}

/// How long the worker trusts the grants it read for a (task, module) pair
/// before it reads the binding again: the delay until new grants for the
/// same module reach running jobs. (A job whose module is not cached reads
/// the binding at once.)
pub const GRANTS_CACHE_FOR: Duration = Duration::from_secs(5);

/// Bounds the grants cache; past it the cache starts over.
pub(super) const GRANTS_CACHE_MAX: usize = 4096;

/// A delivery of a fresh job of task `t` on queue `q` at `attempt`, with
/// `max_retries`, for the unit tests of the settlement rules.
#[cfg(test)]
use chrono::Utc;

#[cfg(test)]
pub(crate) fn test_delivery(attempt: u32, max_retries: u32) -> crate::queue::Delivery {
    use crate::queue::{Delivery, Job, Lease, RetryPolicy};
    let mut job = Job {
        task: Some("t".into()),
        attempt,
        ..Job::new("q", "{}", Utc::now())
    };
    job.retry = RetryPolicy {
        max_retries,
        ..RetryPolicy::none()
    };
    Delivery {
        lease: Lease {
            queue: "q".into(),
            id: job.id,
            member: format!("{}|0|w|0", job.id),
            redeliveries: 0,
        },
        job,
        leased_at: chrono::DateTime::from_timestamp_millis(0).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A maximum below the core count holds: before, the slots started at
    /// one per core and the maximum was raised to that.
    #[test]
    fn a_maximum_below_the_cores_caps_the_slots() {
        // As on a machine of 8 cores.
        let eight = WorkerConfig {
            concurrency: 8,
            ..WorkerConfig::default()
        };
        let mut c = eight.clone();
        c.set_slots(None, Some(2));
        assert_eq!((c.concurrency, c.most_slots()), (2, 2));
        let mut c = eight.clone();
        c.set_slots(None, Some(16));
        assert_eq!((c.concurrency, c.most_slots()), (8, 16));
        let mut c = eight.clone();
        c.set_slots(Some(3), Some(5));
        assert_eq!((c.concurrency, c.max_concurrency), (3, Some(5)));
        let mut c = eight;
        c.set_slots(Some(3), None);
        assert_eq!((c.concurrency, c.max_concurrency), (3, None));
    }
}
