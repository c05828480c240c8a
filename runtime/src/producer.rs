//! The producer: turns an [`EnqueueRequest`] into a validated [`Job`]
//! (resolving the task name through the registry, applying the binding's
//! defaults and the queues' rate limits) and hands it to a broker. A batch
//! is validated whole before anything is stored.
//!
//! It sits above the queue and the registry, which know nothing of each
//! other: the queue stores and delivers jobs, the registry stores modules
//! and bindings, and this is the one place that joins them. [`ChildJobs`]
//! gives a run the same path for the jobs it enqueues (`jobs.enqueue`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::queue::job::{
    DEFAULT_QUEUE, DEFAULT_RESULT_TTL, Job, JobError, JobId, JobLimits, MAX_DELAY, RateLimit,
    RetryPolicy, check_priority, validate_json, validate_queue_name,
};
use crate::queue::partition::Partitions;
use crate::queue::{Broker, BrokerError, Enqueued};
use crate::registry::{JobsGrant, ModuleHash, Registry, RegistryError, TaskBinding};
use crate::sandbox::HostError;
use crate::sandbox::RunLimits;
use crate::sandbox::host::JobEnqueuer;
use crate::sandbox::wit::jobs::{EnqueueOptions, WorkflowOptions};

/// What a caller asks for. Everything but the task (or module) and the
/// input is optional and falls back to the task binding's defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnqueueRequest {
    pub task: Option<String>,
    /// `sha256:<hex>`: run this module directly (no task binding).
    pub module: Option<String>,
    /// JSON text.
    pub input: String,
    pub queue: Option<String>,
    /// Seconds from now; at most [`MAX_DELAY_SECS`].
    pub countdown_secs: Option<f64>,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    /// Seconds from now; at most [`MAX_DELAY_SECS`].
    pub expires_in_secs: Option<f64>,
    pub retry: Option<RetryPolicy>,
    pub limits: Option<JobLimits>,
    /// `10/m` style; applies to the task name.
    pub rate_limit: Option<String>,
    pub idempotency_key: Option<String>,
    pub parent: Option<JobId>,
    /// How long the result is kept, in seconds; at most [`MAX_DELAY_SECS`].
    pub result_ttl_secs: Option<u64>,
    /// Store no result (the state is still kept); the binding's choice
    /// when absent.
    pub ignore_result: Option<bool>,
    /// 0 to 9, higher first; the binding's default when absent.
    pub priority: Option<u64>,
    /// Set by the scheduler: the beat's name and the fire's due time.
    pub schedule: Option<String>,
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Set for a child: its parent's depth plus one.
    #[serde(skip)]
    pub depth: u32,
    /// The job's id, when the runner derives it (a beat's fire has the same
    /// id on every replica); a new one otherwise. Only [`Caller::Runner`].
    #[serde(skip)]
    pub id: Option<JobId>,
}

/// Who asks, which decides what a request may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The runner itself: the scheduler's fires, a task's children once its
    /// jobs grant is checked, the CLI in-process. Anything up to the
    /// documented maxima, and the runner's own idempotency keys.
    Runner,
    /// An admin token: anything up to the documented maxima.
    Admin,
    /// A submit token: may only lower what the task's binding allows (its
    /// limits or, where the binding sets none, the worker's defaults; its
    /// retries); may not set a rate limit, pin a module or send to a queue
    /// that is neither the task's nor configured.
    Submitter,
    /// A running task, for the steps of a workflow it starts: like a
    /// submitter, except that the queues its steps name are its jobs
    /// grant's to allow (checked before), and the workflow's idempotency
    /// key may be one the runner derived for it. A plain child
    /// (`jobs.enqueue`) can set none of these fields at all.
    Task,
}

/// Idempotency keys the runner derives itself; a caller may not use them.
const RESERVED_KEY_PREFIXES: [&str; 3] = ["beat:", "child:", "wf:"];

impl EnqueueRequest {
    pub fn task(name: impl Into<String>, input: impl Into<String>) -> Self {
        EnqueueRequest {
            task: Some(name.into()),
            input: input.into(),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Invalid(#[from] JobError),
    /// A job of a batch is wrong (invalid, or its module unknown).
    #[error("job {index} of the batch: {source}")]
    InBatch {
        index: usize,
        source: Box<EnqueueError>,
    },
    #[error("unknown module {0}: upload it first")]
    UnknownModule(ModuleHash),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("broker: {0}")]
    Broker(#[from] BrokerError),
}

/// Enqueues jobs: validation, defaults from the task binding, then the broker.
#[derive(Clone)]
pub struct Producer {
    broker: Arc<dyn Broker>,
    registry: Arc<dyn Registry>,
    queue_limits: HashMap<String, RateLimit>,
    /// Queues a submitter may name besides its task's own and `default`.
    queues: BTreeSet<String>,
    /// Where a partitioned queue's jobs go.
    partitions: Partitions,
}

impl Producer {
    pub fn new(broker: Arc<dyn Broker>, registry: Arc<dyn Registry>) -> Self {
        Producer {
            broker,
            registry,
            queue_limits: HashMap::new(),
            queues: BTreeSet::new(),
            partitions: Partitions::default(),
        }
    }

    /// Sends each job of a partitioned queue to one of its partitions
    /// ([`Partitions::place`]).
    pub fn with_partitions(mut self, partitions: Partitions) -> Self {
        for (q, _) in partitions.split_queues() {
            self.queues.insert(q.to_string());
        }
        self.partitions = partitions;
        self
    }

    /// The partitioned queues.
    pub fn partitions(&self) -> &Partitions {
        &self.partitions
    }

    /// Queues the operator configured: a submitter may send jobs to them.
    pub fn with_queues<S: AsRef<str>>(
        mut self,
        queues: impl IntoIterator<Item = S>,
    ) -> Result<Self, JobError> {
        for q in queues {
            validate_queue_name(q.as_ref())?;
            self.queues.insert(q.as_ref().to_string());
        }
        Ok(self)
    }

    /// A global rate limit for every job of `queue` (`10/m`).
    pub fn with_queue_limit(mut self, queue: &str, spec: &str) -> Result<Self, JobError> {
        validate_queue_name(queue)?;
        let limit = RateLimit::parse(format!("queue:{queue}"), spec)?;
        self.queue_limits.insert(queue.to_string(), limit);
        self.queues.insert(queue.to_string());
        Ok(self)
    }

    /// The global rate limit of `queue`'s jobs, if one is set.
    pub fn queue_limit(&self, queue: &str) -> Option<&RateLimit> {
        self.queue_limits.get(queue)
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The module task `name` is bound to now (`None` when it is not
    /// bound): what a job of it enqueued now would run.
    pub async fn bound_module(&self, name: &str) -> Result<Option<ModuleHash>, RegistryError> {
        Ok(self.registry.task(name).await?.map(|b| b.module))
    }

    /// Enqueues `req` for the runner itself (see [`Caller`]).
    pub async fn enqueue(&self, req: EnqueueRequest) -> Result<Enqueued, EnqueueError> {
        self.enqueue_as(Caller::Runner, req).await
    }

    pub async fn enqueue_as(
        &self,
        caller: Caller,
        req: EnqueueRequest,
    ) -> Result<Enqueued, EnqueueError> {
        let job = self
            .prepare_cached(caller, req, &mut HashMap::new())
            .await?;
        let mut out = self.broker.enqueue(vec![job]).await?;
        out.pop()
            .ok_or_else(|| BrokerError::Protocol("enqueue returned nothing".into()).into())
    }

    /// Validates every request first; stores nothing if one is bad.
    pub async fn enqueue_batch(
        &self,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<Enqueued>, EnqueueError> {
        self.enqueue_batch_as(Caller::Runner, reqs).await
    }

    pub async fn enqueue_batch_as(
        &self,
        caller: Caller,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<Enqueued>, EnqueueError> {
        let jobs = self.prepare_batch_as(caller, reqs).await?;
        Ok(self.broker.enqueue(jobs).await?)
    }

    /// Builds the jobs `reqs` describe, validated whole (an error names
    /// the request's index), without storing them.
    pub async fn prepare_batch_as(
        &self,
        caller: Caller,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<Job>, EnqueueError> {
        let mut jobs = Vec::with_capacity(reqs.len());
        let mut bindings: HashMap<String, TaskBinding> = HashMap::new();
        for (index, req) in reqs.into_iter().enumerate() {
            match self.prepare_cached(caller, req, &mut bindings).await {
                Ok(j) => jobs.push(j),
                Err(e @ (EnqueueError::Invalid(_) | EnqueueError::UnknownModule(_))) => {
                    return Err(EnqueueError::InBatch {
                        index,
                        source: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(jobs)
    }

    /// Builds the job a request describes, without storing it.
    pub async fn prepare(&self, req: EnqueueRequest) -> Result<Job, EnqueueError> {
        self.prepare_cached(Caller::Runner, req, &mut HashMap::new())
            .await
    }

    async fn prepare_cached(
        &self,
        caller: Caller,
        req: EnqueueRequest,
        bindings: &mut HashMap<String, TaskBinding>,
    ) -> Result<Job, EnqueueError> {
        let now = Utc::now();
        let expires = check_request(&req, now)?;
        let binding = match &req.task {
            Some(name) => Some(self.binding(name, bindings).await?),
            None => None,
        };
        let module = self.module_of(&req, binding.as_ref()).await?;
        let queue = req
            .queue
            .clone()
            .or_else(|| binding.as_ref().map(|b| b.queue.clone()))
            .unwrap_or_else(|| DEFAULT_QUEUE.to_string());
        validate_queue_name(&queue)?;
        if caller != Caller::Runner
            && let Some(k) = &req.idempotency_key
        {
            check_caller_key(k)?;
        }
        if matches!(caller, Caller::Submitter | Caller::Task) {
            self.check_submitter(caller, &req, binding.as_ref())?;
        }
        let rate_limits = self.rate_limits(&req, binding.as_ref(), module.as_ref(), &queue)?;
        let eta = match (req.eta, req.countdown_secs) {
            (Some(e), _) => Some(e),
            (None, Some(c)) if c > 0.0 => Some(after_secs(now, c, "countdown")?),
            _ => None,
        };
        let mut limits = binding
            .as_ref()
            .map(|b| b.limits.clone())
            .unwrap_or_default();
        if let Some(l) = req.limits {
            limits.time_limit_ms = l.time_limit_ms.or(limits.time_limit_ms);
            limits.soft_time_limit_ms = l.soft_time_limit_ms.or(limits.soft_time_limit_ms);
            limits.fuel = l.fuel.or(limits.fuel);
            limits.memory_bytes = l.memory_bytes.or(limits.memory_bytes);
        }
        // Capped where the job is prepared, so that no script is ever handed
        // a TTL Redis refuses (after it has written something).
        let max_ttl_ms = MAX_DELAY.as_millis() as u64;
        let result_ttl_ms = req
            .result_ttl_secs
            .map(|s| s.saturating_mul(1000))
            .or_else(|| binding.as_ref().and_then(|b| b.result_ttl_ms))
            .unwrap_or(DEFAULT_RESULT_TTL.as_millis() as u64)
            .clamp(1, max_ttl_ms);
        let mut job = Job::new(queue, req.input, now);
        if caller == Caller::Runner
            && let Some(id) = req.id
        {
            job.id = id;
        }
        let mut job = Job {
            task: req.task.clone(),
            module,
            retry: req
                .retry
                .or_else(|| binding.as_ref().map(|b| b.retry.clone()))
                .unwrap_or_default(),
            limits,
            rate_limits,
            eta,
            expires,
            idempotency_key: req.idempotency_key,
            parent: req.parent,
            depth: req.depth,
            result_ttl_ms,
            ignore_result: req
                .ignore_result
                .or_else(|| binding.as_ref().map(|b| b.ignore_result))
                .unwrap_or(false),
            schedule: req.schedule,
            scheduled_for: req.scheduled_for,
            priority: match req.priority {
                // Checked by `check_request`.
                Some(p) => check_priority("priority", p)?,
                None => binding.as_ref().map_or(0, |b| b.priority),
            },
            ..job
        };
        self.partitions.place(&mut job);
        Ok(job)
    }

    /// What a submitter (or a task, for its workflow's steps) may not do
    /// (see [`Caller`]): everything here is the operator's to decide.
    fn check_submitter(
        &self,
        caller: Caller,
        req: &EnqueueRequest,
        binding: Option<&TaskBinding>,
    ) -> Result<(), JobError> {
        let forbidden = |field, reason: String| JobError::Forbidden { field, reason };
        // Who asks, for the reasons given.
        let who = if caller == Caller::Task {
            "a task's workflow"
        } else {
            "a submit token"
        };
        if req.module.is_some() {
            return Err(forbidden(
                "module",
                "running a module by hash is for admin tokens; send the task's name".into(),
            ));
        }
        if req.rate_limit.is_some() {
            return Err(forbidden(
                "rate_limit",
                "only an admin may set a rate limit; the task's binding sets it".into(),
            ));
        }
        // A submitter's request names a task (module-only requests were
        // refused above), so it has a binding.
        let Some(b) = binding else {
            return Err(JobError::NoTask);
        };
        // A task's queues are its grant's word (`ChildJobs::admit_jobs`).
        if caller == Caller::Submitter
            && let Some(q) = &req.queue
            && q != &b.queue
            && q != DEFAULT_QUEUE
            && !self.queues.contains(q)
        {
            return Err(forbidden(
                "queue",
                format!(
                    "queue {q:?} is not configured (the task's is {:?}); only an admin may send to it",
                    b.queue
                ),
            ));
        }
        if let Some(l) = &req.limits {
            let defaults = RunLimits::default();
            let ceilings = [
                (
                    "limits.time_limit_ms",
                    l.time_limit_ms,
                    b.limits
                        .time_limit_ms
                        .or(Some(defaults.timeout.as_millis() as u64)),
                ),
                ("limits.fuel", l.fuel, b.limits.fuel.or(defaults.fuel)),
                (
                    "limits.memory_bytes",
                    l.memory_bytes,
                    b.limits.memory_bytes.or(Some(defaults.memory_bytes)),
                ),
            ];
            for (field, asked, ceiling) in ceilings {
                if let (Some(asked), Some(ceiling)) = (asked, ceiling)
                    && asked > ceiling
                {
                    return Err(forbidden(
                        field,
                        format!("{asked} is above the task's {ceiling}; {who} may only lower it"),
                    ));
                }
            }
        }
        if let Some(r) = &req.retry {
            let allowed = &b.retry;
            if r.max_retries > allowed.max_retries {
                return Err(forbidden(
                    "retry.max_retries",
                    format!(
                        "{} is above the task's {}; {who} may only lower it",
                        r.max_retries, allowed.max_retries
                    ),
                ));
            }
            if r.max_retries > 0 && r.backoff_base_ms < allowed.backoff_base_ms {
                return Err(forbidden(
                    "retry.backoff_base_ms",
                    format!(
                        "{} is below the task's {}; {who} may only retry more slowly",
                        r.backoff_base_ms, allowed.backoff_base_ms
                    ),
                ));
            }
            // The longest wait is the cap, or the base if larger (see
            // `RetryPolicy::backoff`).
            let longest = |p: &RetryPolicy| p.backoff_cap_ms.max(p.backoff_base_ms);
            if r.max_retries > 0 && longest(r) < longest(allowed) {
                return Err(forbidden(
                    "retry.backoff_cap_ms",
                    format!(
                        "{} is below the task's {}; {who} may only retry more slowly",
                        longest(r),
                        longest(allowed)
                    ),
                ));
            }
            if r.max_retries > 0 && r.jitter && !allowed.jitter {
                return Err(forbidden(
                    "retry.jitter",
                    format!(
                        "the task's retries wait their whole backoff; with jitter they would come sooner, and {who} may only retry more slowly"
                    ),
                ));
            }
            if let Some(kind) = r.retry_on.iter().find(|k| !allowed.retry_on.contains(k)) {
                return Err(forbidden(
                    "retry.retry_on",
                    format!(
                        "the task does not retry {kind:?} failures; only an admin may add them"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The binding of task `name`, read once per batch.
    async fn binding(
        &self,
        name: &str,
        bindings: &mut HashMap<String, TaskBinding>,
    ) -> Result<TaskBinding, EnqueueError> {
        if let Some(b) = bindings.get(name) {
            return Ok(b.clone());
        }
        let b = self
            .registry
            .task(name)
            .await?
            .ok_or_else(|| JobError::UnknownTask(name.to_string()))?;
        bindings.insert(name.to_string(), b.clone());
        Ok(b)
    }

    /// The module the job runs: the one the request names (which must be
    /// uploaded), else the binding's.
    async fn module_of(
        &self,
        req: &EnqueueRequest,
        binding: Option<&TaskBinding>,
    ) -> Result<Option<ModuleHash>, EnqueueError> {
        match (&req.module, binding) {
            (Some(m), _) => {
                let hash = ModuleHash::parse_lenient(m)
                    .map_err(|_| JobError::InvalidModuleHash(m.clone()))?;
                if !self.registry.has_module(&hash).await? {
                    return Err(EnqueueError::UnknownModule(hash));
                }
                Ok(Some(hash))
            }
            (None, Some(b)) => Ok(Some(b.module)),
            (None, None) => Err(JobError::NoTask.into()),
        }
    }

    /// The task's rate limit (the request's, else the binding's) and the
    /// queue's.
    fn rate_limits(
        &self,
        req: &EnqueueRequest,
        binding: Option<&TaskBinding>,
        module: Option<&ModuleHash>,
        queue: &str,
    ) -> Result<Vec<RateLimit>, EnqueueError> {
        let mut rate_limits = Vec::new();
        let task_limit = req
            .rate_limit
            .clone()
            .or_else(|| binding.and_then(|b| b.rate_limit.clone()));
        if let Some(spec) = task_limit {
            let key = match (&req.task, module) {
                (Some(t), _) => format!("task:{t}"),
                (None, Some(m)) => format!("module:{m}"),
                (None, None) => "module:".to_string(),
            };
            rate_limits.push(RateLimit::parse(key, &spec)?);
        }
        if let Some(l) = self.queue_limits.get(queue) {
            rate_limits.push(l.clone());
        }
        Ok(rate_limits)
    }
}

/// The checks of a request that need no lookup: its input is JSON, its
/// numbers are in range, its names are valid. Returns its expiry time.
fn check_request(
    req: &EnqueueRequest,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, EnqueueError> {
    validate_json(&req.input)?;
    if let Some(p) = req.priority {
        check_priority("priority", p)?;
    }
    // One time, one way: neither silently wins.
    if req.eta.is_some() && req.countdown_secs.is_some() {
        return Err(JobError::Both {
            field: "countdown",
            other: "eta",
        }
        .into());
    }
    if req.expires.is_some() && req.expires_in_secs.is_some() {
        return Err(JobError::Both {
            field: "expires_in",
            other: "expires",
        }
        .into());
    }
    if let Some(c) = req.countdown_secs
        && (c < 0.0 || !c.is_finite())
    {
        return Err(JobError::NegativeCountdown(c).into());
    }
    if let Some(c) = req.countdown_secs {
        after_secs(now, c, "countdown")?;
    }
    let expires = match (req.expires, req.expires_in_secs) {
        (Some(e), _) => Some(e),
        (None, Some(s)) if s.is_finite() && s <= 0.0 => {
            return Err(JobError::ExpiryInPast {
                field: "expires_in",
                at: now,
            }
            .into());
        }
        (None, Some(s)) => Some(after_secs(now, s, "expires_in")?),
        (None, None) => None,
    };
    if let Some(e) = expires
        && e <= now
    {
        return Err(JobError::ExpiryInPast {
            field: "expires",
            at: e,
        }
        .into());
    }
    // Dates are checked like delays: no time further than MAX_DELAY.
    let latest = now.checked_add_signed(chrono::Duration::from_std(MAX_DELAY).unwrap_or_default());
    for (field, at) in [("eta", req.eta), ("expires", expires)] {
        if let (Some(at), Some(latest)) = (at, latest)
            && at > latest
        {
            return Err(JobError::TooFar { field, at }.into());
        }
    }
    if let Some(q) = &req.queue {
        validate_queue_name(q)?;
    }
    if let Some(ttl) = req.result_ttl_secs
        && ttl > MAX_DELAY.as_secs()
    {
        return Err(JobError::OutOfRange {
            field: "result_ttl",
            value: ttl as f64,
            max: MAX_DELAY_SECS,
        }
        .into());
    }
    if let Some(k) = &req.idempotency_key
        && (k.is_empty() || k.len() > 200)
    {
        return Err(JobError::InvalidIdempotencyKey("must be 1 to 200 bytes".into()).into());
    }
    // The enqueue script's mark of a workflow's step (stored once by its
    // id): as a key it deduplicated nothing on Redis.
    if req.idempotency_key.as_deref() == Some("=") {
        return Err(JobError::InvalidIdempotencyKey("\"=\" is reserved".into()).into());
    }
    if let Some(r) = &req.retry {
        r.check()?;
    }
    if let Some(l) = &req.limits {
        l.check()?;
    }
    Ok(expires)
}

/// Refuses an idempotency key a caller may not choose: the runner's own
/// (`beat:`, `child:`), which would suppress a beat's fire or a task's child.
pub fn check_caller_key(key: &str) -> Result<(), JobError> {
    match RESERVED_KEY_PREFIXES.iter().find(|p| key.starts_with(*p)) {
        Some(p) => Err(JobError::InvalidIdempotencyKey(format!(
            "keys starting with {p:?} are the runner's own"
        ))),
        None => Ok(()),
    }
}

/// The longest delay a request may ask for (a countdown, an expiry), in
/// seconds: [`MAX_DELAY`].
pub const MAX_DELAY_SECS: f64 = MAX_DELAY.as_secs() as f64;

/// `now` plus `secs` seconds of a request's `field`, checked: a number that
/// is not finite, negative or above [`MAX_DELAY_SECS`] is refused (never
/// an overflow).
fn after_secs(
    now: DateTime<Utc>,
    secs: f64,
    field: &'static str,
) -> Result<DateTime<Utc>, JobError> {
    let too_far = || JobError::OutOfRange {
        field,
        value: secs,
        max: MAX_DELAY_SECS,
    };
    if !secs.is_finite() || !(0.0..=MAX_DELAY_SECS).contains(&secs) {
        return Err(too_far());
    }
    // Up to the next millisecond: a delay or expiry under 1 ms is not 0.
    chrono::Duration::try_milliseconds((secs * 1000.0).ceil() as i64)
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(too_far)
}

/// Parses `30s`, `1m`, `1500ms` or a plain number of seconds; `None`
/// for anything else, a negative number, or one too large for a
/// `Duration` (callers cap what they accept).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(n).ok();
    }
    humantime::parse_duration(s).ok()
}

/// The largest input a task may give a child job: 1 MiB.
pub const MAX_CHILD_INPUT_BYTES: usize = 1 << 20;

/// `jobs.enqueue` for the run of job `parent`, on top of a [`Producer`],
/// within the run's jobs grant: only the tasks and queues it names, at most
/// `max_children` calls per run, no deeper than `max_depth`. A child that
/// names no idempotency key gets one derived from the parent, its attempt
/// and the call's sequence number, so a run that is repeated after its
/// worker was lost enqueues the same children, not new ones.
pub struct ChildJobs {
    producer: Producer,
    parent: JobId,
    attempt: u32,
    depth: u32,
    grant: Option<JobsGrant>,
    state: Mutex<ChildState>,
    workflows: Option<Arc<dyn ChildWorkflows>>,
}

/// Starts workflows of children for [`ChildJobs`] (`jobs.start-workflow`):
/// the workflow layer, above this one, provides it.
pub trait ChildWorkflows: Send + Sync {
    /// Checks `workflow` (JSON) whole, admits each of its jobs through
    /// `children` ([`ChildJobs::admit_jobs`]), and starts it as children of
    /// `children`'s job under idempotency key `key`. Returns its id.
    fn start<'a>(
        &'a self,
        children: &'a ChildJobs,
        workflow: String,
        key: String,
        ttl_secs: Option<u64>,
    ) -> BoxFuture<'a, Result<String, HostError>>;
}

/// The largest workflow (JSON) a task may start: 1 MiB.
pub const MAX_CHILD_WORKFLOW_BYTES: usize = 1 << 20;

#[derive(Default)]
struct ChildState {
    calls: u32,
    children: Vec<JobId>,
}

impl ChildJobs {
    /// The children of the run of `parent` (its current attempt), under
    /// `grant` (none: every call is denied).
    pub fn new(producer: Producer, parent: &Job, grant: Option<JobsGrant>) -> Self {
        Self {
            producer,
            parent: parent.id,
            attempt: parent.attempt,
            depth: parent.depth,
            grant,
            state: Mutex::new(ChildState::default()),
            workflows: None,
        }
    }

    /// Lets the run start workflows of children through `workflows`.
    pub fn with_workflows(mut self, workflows: Arc<dyn ChildWorkflows>) -> Self {
        self.workflows = Some(workflows);
        self
    }

    /// The producer children go through.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The job whose children these are, and its depth.
    pub fn parent(&self) -> (JobId, u32) {
        (self.parent, self.depth)
    }

    /// The grant's word on the jobs of a workflow (each task, and the
    /// queue it asks for if any), counted as that many children; nothing
    /// is counted when one is refused.
    pub fn admit_jobs(&self, jobs: &[(String, Option<String>)]) -> Result<(), HostError> {
        let denied = |m: String| HostError::Denied(m);
        let Some(grant) = &self.grant else {
            return Err(denied("the task has no jobs grant".into()));
        };
        for (task, queue) in jobs {
            self.admit_one(grant, task, queue.as_deref())?;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let after = state.calls.saturating_add(jobs.len() as u32);
        if after > grant.max_children() {
            return Err(denied(format!(
                "the workflow's {} jobs and the {} children this run enqueued before are more than grants.jobs.max_children ({})",
                jobs.len(),
                state.calls,
                grant.max_children()
            )));
        }
        state.calls = after;
        Ok(())
    }

    /// The checks of one child under `grant`: its task, the queue it asks
    /// for, the depth.
    fn admit_one(
        &self,
        grant: &JobsGrant,
        task: &str,
        queue: Option<&str>,
    ) -> Result<(), HostError> {
        let denied = |m: String| HostError::Denied(m);
        if !grant.allows_task(task) {
            return Err(denied(format!(
                "task {task:?} is not in grants.jobs.tasks {:?}",
                grant.tasks
            )));
        }
        if let Some(q) = queue
            && !grant.allows_queue(q)
        {
            return Err(denied(format!(
                "queue {q:?} is not in grants.jobs.queues {:?} (leave `queue` unset for the task's own)",
                grant.queues
            )));
        }
        if self.depth >= grant.max_depth() {
            return Err(denied(format!(
                "this job is at depth {} and grants.jobs.max_depth is {}: it may not enqueue children",
                self.depth,
                grant.max_depth()
            )));
        }
        Ok(())
    }

    /// The next call's sequence number, for a key of the runner's own.
    fn next_seq(&self) -> u32 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .calls
            .saturating_add(1)
    }

    /// The jobs enqueued so far, in order, each once (an idempotent
    /// enqueue that returned an earlier job lists it once).
    pub fn children(&self) -> Vec<JobId> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .clone()
    }

    /// The grant's word on one call; its sequence number (1-based) if
    /// allowed.
    fn admit(&self, task: &str, options: &EnqueueOptions) -> Result<u32, HostError> {
        let denied = |m: String| HostError::Denied(m);
        let Some(grant) = &self.grant else {
            return Err(denied("the task has no jobs grant".into()));
        };
        self.admit_one(grant, task, options.queue.as_deref())?;
        if let Some(k) = &options.idempotency_key {
            check_caller_key(k).map_err(invalid)?;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.calls >= grant.max_children() {
            return Err(denied(format!(
                "this run enqueued {} children, the most grants.jobs.max_children allows",
                state.calls
            )));
        }
        state.calls += 1;
        Ok(state.calls)
    }
}

impl JobEnqueuer for ChildJobs {
    fn enqueue(
        &self,
        task: String,
        input: String,
        options: EnqueueOptions,
    ) -> BoxFuture<'_, Result<String, HostError>> {
        Box::pin(async move {
            if input.len() > MAX_CHILD_INPUT_BYTES {
                return Err(HostError::Invalid(format!(
                    "the input is {} bytes, above the {MAX_CHILD_INPUT_BYTES} a child's may have",
                    input.len()
                )));
            }
            let seq = self.admit(&task, &options)?;
            let key = options
                .idempotency_key
                .unwrap_or_else(|| format!("child:{}:{}:{seq}", self.parent, self.attempt));
            let request = EnqueueRequest {
                task: Some(task),
                input,
                queue: options.queue,
                countdown_secs: options.countdown_ms.map(|ms| ms as f64 / 1000.0),
                idempotency_key: Some(key),
                parent: Some(self.parent),
                depth: self.depth + 1,
                ..EnqueueRequest::default()
            };
            // The grant is the operator's word on tasks and queues.
            let enqueued = self
                .producer
                .enqueue_as(Caller::Runner, request)
                .await
                .map_err(enqueue_error)?;
            let id = enqueued.job.id;
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !state.children.contains(&id) {
                state.children.push(id);
            }
            Ok(id.to_string())
        })
    }

    fn start_workflow(
        &self,
        workflow: String,
        options: WorkflowOptions,
    ) -> BoxFuture<'_, Result<String, HostError>> {
        Box::pin(async move {
            let Some(workflows) = &self.workflows else {
                return Err(HostError::Unavailable(
                    "workflows are not available to this run".into(),
                ));
            };
            if workflow.len() > MAX_CHILD_WORKFLOW_BYTES {
                return Err(HostError::Invalid(format!(
                    "the workflow is {} bytes, above the {MAX_CHILD_WORKFLOW_BYTES} a task may start",
                    workflow.len()
                )));
            }
            let key = match options.idempotency_key {
                Some(k) => {
                    check_caller_key(&k).map_err(invalid)?;
                    k
                }
                None => format!(
                    "child:{}:{}:wf{}",
                    self.parent,
                    self.attempt,
                    self.next_seq()
                ),
            };
            workflows.start(self, workflow, key, options.ttl_secs).await
        })
    }
}

/// What the task can do about it: fix its call (`invalid`), or try again
/// later (`transient`).
pub fn enqueue_error(e: EnqueueError) -> HostError {
    match e {
        EnqueueError::Invalid(e) => invalid(e),
        EnqueueError::InBatch { source, .. } => enqueue_error(*source),
        EnqueueError::UnknownModule(_) => HostError::Invalid(e.to_string()),
        EnqueueError::Registry(e) => HostError::Transient(format!("registry: {e}")),
        EnqueueError::Broker(BrokerError::Job(e)) => invalid(e),
        EnqueueError::Broker(e) => HostError::Transient(format!("broker: {e}")),
    }
}

fn invalid(e: JobError) -> HostError {
    HostError::Invalid(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_too_large_negative_or_not_numbers_are_refused() {
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 30s "), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        // Each of these used to panic in `Duration::from_secs_f64`, or
        // would: a request must not take its handler down.
        for bad in ["1e20", "1e300", "-1", "NaN", "inf", "-inf", "soon", ""] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
