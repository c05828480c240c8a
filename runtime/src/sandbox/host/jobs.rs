//! `runner:task/jobs`: enqueueing child jobs (fan-out).
//!
//! [`ChildJobs`] is the implementation the worker gives a run: it enqueues
//! through the queue's [`Producer`] (same validation, task defaults and rate
//! limits as the API), records the running job as each child's `parent`,
//! and remembers the children so that the worker can list them on the
//! parent's record.

use std::sync::Mutex;

use futures::future::BoxFuture;

use super::GuestResult;
use crate::queue::{EnqueueError, EnqueueRequest, JobError, JobId, Producer};
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::jobs::{self, EnqueueOptions};
use crate::sandbox::run::RunState;

/// The queue as one run sees it: bound to the current job, so that what it
/// enqueues is recorded as that job's child, and to the task's grant.
pub trait JobEnqueuer: Send + Sync {
    /// Enqueues a job for `task` with JSON `input`; returns the new job's id.
    fn enqueue(
        &self,
        task: String,
        input: String,
        options: EnqueueOptions,
    ) -> BoxFuture<'_, Result<String, HostError>>;
}

impl jobs::Host for RunState {
    async fn enqueue(
        &mut self,
        task: String,
        input: String,
        options: EnqueueOptions,
    ) -> GuestResult<String> {
        self.host_call("jobs", "enqueue", |host| &host.jobs)
            .run(|queue| async move { queue.enqueue(task, input, options).await })
            .await
    }
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
        EnqueueError::Broker(crate::queue::BrokerError::Job(e)) => invalid(e),
        EnqueueError::Broker(e) => HostError::Transient(format!("broker: {e}")),
    }
}

fn invalid(e: JobError) -> HostError {
    HostError::Invalid(e.to_string())
}
