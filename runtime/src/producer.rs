//! The producer side: turns an [`EnqueueRequest`] into a validated [`Job`]
//! (resolving the task name through the registry) and hands it to a broker.
//! A batch is validated whole before anything is stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::{
    DEFAULT_RESULT_TTL, Job, JobError, JobId, JobLimits, JobState, RateLimit, RetryPolicy,
    validate_json, validate_queue_name,
};
use super::{Broker, BrokerError, Enqueued};
use crate::registry::{Registry, RegistryError, parse_module_hash};

pub const DEFAULT_QUEUE: &str = "default";

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
    pub countdown_secs: Option<f64>,
    pub eta: Option<DateTime<Utc>>,
    pub expires: Option<DateTime<Utc>>,
    pub expires_in_secs: Option<f64>,
    pub retry: Option<RetryPolicy>,
    pub limits: Option<JobLimits>,
    /// `10/m` style; applies to the task name.
    pub rate_limit: Option<String>,
    pub idempotency_key: Option<String>,
    pub parent: Option<JobId>,
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
    UnknownModule(String),
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
        let mut bindings = HashMap::new();
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
        bindings: &mut HashMap<String, crate::registry::TaskBinding>,
    ) -> Result<Job, EnqueueError> {
        validate_json(&req.input)?;
        let now = Utc::now();
        if let Some(c) = req.countdown_secs
            && (c < 0.0 || !c.is_finite())
        {
            return Err(JobError::NegativeCountdown(c).into());
        }
        let expires = match (req.expires, req.expires_in_secs) {
            (Some(e), _) => Some(e),
            (None, Some(s)) if s.is_finite() => {
                Some(now + chrono::Duration::milliseconds((s * 1000.0) as i64))
            }
            (None, Some(_)) => return Err(JobError::ExpiryInPast(now).into()),
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
        if let Some(k) = &req.idempotency_key
            && (k.is_empty() || k.len() > 200)
        {
            return Err(JobError::InvalidIdempotencyKey("must be 1 to 200 bytes".into()).into());
        }

        let binding = match &req.task {
            Some(name) => {
                if let Some(b) = bindings.get(name) {
                    Some(b.clone())
                } else {
                    let b = self
                        .registry
                        .task(name)
                        .await?
                        .ok_or_else(|| JobError::UnknownTask(name.clone()))?;
                    bindings.insert(name.clone(), b.clone());
                    Some(b)
                }
            }
            None => None,
        };
        let module = match (&req.module, &binding) {
            (Some(m), _) => {
                let hash =
                    parse_module_hash(m).ok_or_else(|| JobError::InvalidModuleHash(m.clone()))?;
                if !self.registry.has_module(&hash).await? {
                    return Err(EnqueueError::UnknownModule(m.clone()));
                }
                Some(hash)
            }
            (None, Some(b)) => Some(b.module.clone()),
            (None, None) => return Err(JobError::NoTask.into()),
        };

        let queue = req
            .queue
            .clone()
            .or_else(|| binding.as_ref().map(|b| b.queue.clone()))
            .unwrap_or_else(|| DEFAULT_QUEUE.to_string());
        validate_queue_name(&queue)?;

        let mut rate_limits = Vec::new();
        let task_limit = req
            .rate_limit
            .clone()
            .or_else(|| binding.as_ref().and_then(|b| b.rate_limit.clone()));
        if let Some(spec) = task_limit {
            let key = match &req.task {
                Some(t) => format!("task:{t}"),
                None => format!("module:{}", module.clone().unwrap_or_default()),
            };
            rate_limits.push(RateLimit::parse(key, &spec)?);
        }
        if let Some(l) = self.queue_limits.get(&queue) {
            rate_limits.push(l.clone());
        }

        let eta = match (req.eta, req.countdown_secs) {
            (Some(e), _) => Some(e),
            (None, Some(c)) if c > 0.0 => {
                Some(now + chrono::Duration::milliseconds((c * 1000.0) as i64))
            }
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
        let result_ttl_ms = req
            .result_ttl_secs
            .map(|s| s.saturating_mul(1000))
            .or_else(|| binding.as_ref().and_then(|b| b.result_ttl_ms))
            .unwrap_or(DEFAULT_RESULT_TTL.as_millis() as u64)
            .max(1);
        Ok(Job {
            state: JobState::Pending,
            id: JobId::new(),
            task: req.task.clone(),
            module,
            input: req.input,
            queue,
            attempt: 1,
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
            children: Vec::new(),
            result_ttl_ms,
            created_at: now,
            started_at: None,
            finished_at: None,
            worker: None,
            progress: None,
            result: None,
            error: None,
            redeliveries: 0,
            schedule: req.schedule,
            scheduled_for: req.scheduled_for,
        })
    }
}

/// The record of a dead letter put back in the queue: a fresh first attempt.
pub fn fresh_attempt(job: &Job) -> Job {
    let mut j = job.clone();
    j.state = JobState::Pending;
    j.attempt = 1;
    j.eta = None;
    j.started_at = None;
    j.finished_at = None;
    j.worker = None;
    j.progress = None;
    j.result = None;
    j.error = None;
    j.redeliveries = 0;
    j
}

/// Parses `30s`, `1m`, `1500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return (n >= 0.0 && n.is_finite()).then(|| Duration::from_secs_f64(n));
    }
    humantime::parse_duration(s).ok()
}
