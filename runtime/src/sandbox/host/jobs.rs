//! `runner:task/jobs`: enqueueing child jobs (fan-out) and starting
//! workflows of children.
//!
//! The implementation a worker gives a run is `producer::ChildJobs`: it
//! enqueues through the producer (same validation, task defaults and rate
//! limits as the API) and records the running job as each child's
//! `parent`. This side knows only the [`JobEnqueuer`] trait.

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::jobs::{self, EnqueueOptions, WorkflowOptions};
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

    /// Starts the workflow `workflow` (JSON) of children; returns its id.
    fn start_workflow(
        &self,
        workflow: String,
        options: WorkflowOptions,
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

    async fn start_workflow(
        &mut self,
        workflow: String,
        options: WorkflowOptions,
    ) -> GuestResult<String> {
        self.host_call("jobs", "start-workflow", |host| &host.jobs)
            .run(|queue| async move { queue.start_workflow(workflow, options).await })
            .await
    }
}
