//! The producer: turns an [`EnqueueRequest`] into a validated [`Job`]
//! (resolving the task name through the registry, applying the binding's
//! defaults and the queues' rate limits) and hands it to a broker. A batch
//! is validated whole before anything is stored.
//!
//! It sits above the queue and the registry, which know nothing of each
//! other: the queue stores and delivers jobs, the registry stores modules
//! and bindings, and this is the one place that joins them. [`ChildJobs`]
//! gives a run the same path for the jobs it enqueues (`jobs.enqueue`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::queue::job::{
    DEFAULT_QUEUE, DEFAULT_RESULT_TTL, Job, JobError, JobId, JobLimits, MAX_DELAY, RateLimit,
    RetryPolicy, validate_json, validate_queue_name,
};
use crate::queue::{Broker, BrokerError, Enqueued};
use crate::registry::{ModuleHash, Registry, RegistryError, TaskBinding};
use crate::sandbox::HostError;
use crate::sandbox::host::JobEnqueuer;
use crate::sandbox::wit::jobs::EnqueueOptions;

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
    /// Set by the scheduler: the beat's name and the fire's due time.
    pub schedule: Option<String>,
    pub scheduled_for: Option<DateTime<Utc>>,
}

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
    #[error("job {index} of the batch: {source}")]
    InBatch { index: usize, source: JobError },
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
}

impl Producer {
    pub fn new(broker: Arc<dyn Broker>, registry: Arc<dyn Registry>) -> Self {
        Producer {
            broker,
            registry,
            queue_limits: HashMap::new(),
        }
    }

    /// A global rate limit for every job of `queue` (`10/m`).
    pub fn with_queue_limit(mut self, queue: &str, spec: &str) -> Result<Self, JobError> {
        validate_queue_name(queue)?;
        let limit = RateLimit::parse(format!("queue:{queue}"), spec)?;
        self.queue_limits.insert(queue.to_string(), limit);
        Ok(self)
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub async fn enqueue(&self, req: EnqueueRequest) -> Result<Enqueued, EnqueueError> {
        let job = self.prepare(req).await?;
        let mut out = self.broker.enqueue(vec![job]).await?;
        out.pop()
            .ok_or_else(|| BrokerError::Protocol("enqueue returned nothing".into()).into())
    }

    /// Validates every request first; stores nothing if one is bad.
    pub async fn enqueue_batch(
        &self,
        reqs: Vec<EnqueueRequest>,
    ) -> Result<Vec<Enqueued>, EnqueueError> {
        let mut jobs = Vec::with_capacity(reqs.len());
        let mut bindings: HashMap<String, TaskBinding> = HashMap::new();
        for (index, req) in reqs.into_iter().enumerate() {
            match self.prepare_cached(req, &mut bindings).await {
                Ok(j) => jobs.push(j),
                Err(EnqueueError::Invalid(source)) => {
                    return Err(EnqueueError::InBatch { index, source });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.broker.enqueue(jobs).await?)
    }

    /// Builds the job a request describes, without storing it.
    pub async fn prepare(&self, req: EnqueueRequest) -> Result<Job, EnqueueError> {
        self.prepare_cached(req, &mut HashMap::new()).await
    }

    async fn prepare_cached(
        &self,
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
        Ok(Job {
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
            result_ttl_ms,
            schedule: req.schedule,
            scheduled_for: req.scheduled_for,
            ..Job::new(queue, req.input, now)
        })
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
            return Err(JobError::ExpiryInPast(now).into());
        }
        (None, Some(s)) => Some(after_secs(now, s, "expires_in")?),
        (None, None) => None,
    };
    if let Some(e) = expires
        && e <= now
    {
        return Err(JobError::ExpiryInPast(e).into());
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
    Ok(expires)
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
    chrono::Duration::try_milliseconds((secs * 1000.0) as i64)
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(too_far)
}

/// Parses `30s`, `1m`, `1500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return (n >= 0.0 && n.is_finite()).then(|| Duration::from_secs_f64(n));
    }
    humantime::parse_duration(s).ok()
}

/// `jobs.enqueue` for the run of job `parent`, on top of a [`Producer`].
pub struct ChildJobs {
    producer: Producer,
    parent: JobId,
    children: Mutex<Vec<JobId>>,
}

impl ChildJobs {
    pub fn new(producer: Producer, parent: JobId) -> Self {
        Self {
            producer,
            parent,
            children: Mutex::new(Vec::new()),
        }
    }

    /// The jobs enqueued so far, in order, each once (an idempotent
    /// enqueue that returned an earlier job lists it once).
    pub fn children(&self) -> Vec<JobId> {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
            let request = EnqueueRequest {
                task: Some(task),
                input,
                queue: options.queue,
                countdown_secs: options.countdown_ms.map(|ms| ms as f64 / 1000.0),
                idempotency_key: options.idempotency_key,
                parent: Some(self.parent),
                ..EnqueueRequest::default()
            };
            let enqueued = self
                .producer
                .enqueue(request)
                .await
                .map_err(enqueue_error)?;
            let id = enqueued.job.id;
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            if !children.contains(&id) {
                children.push(id);
            }
            Ok(id.to_string())
        })
    }
}

/// What the task can do about it: fix its call (`invalid`), or try again
/// later (`transient`).
fn enqueue_error(e: EnqueueError) -> HostError {
    match e {
        EnqueueError::Invalid(e) | EnqueueError::InBatch { source: e, .. } => invalid(e),
        EnqueueError::UnknownModule(_) => HostError::Invalid(e.to_string()),
        EnqueueError::Registry(e) => HostError::Transient(format!("registry: {e}")),
        EnqueueError::Broker(BrokerError::Job(e)) => invalid(e),
        EnqueueError::Broker(e) => HostError::Transient(format!("broker: {e}")),
    }
}

fn invalid(e: JobError) -> HostError {
    HostError::Invalid(e.to_string())
}
