//! Enqueues other jobs (fan-out), as children of the current job, and
//! starts workflows of them (chain, group, chord: [`Step`]). Needs the
//! `jobs` grant.
//!
//! ```no_run
//! use std::time::Duration;
//! use runner_sdk::{jobs, TaskError};
//!
//! fn fan_out(users: &[u64]) -> Result<Vec<String>, TaskError> {
//!     let mut ids = Vec::new();
//!     for user in users {
//!         let options = jobs::Options::new()
//!             .queue("mail")
//!             .countdown(Duration::from_secs(60))
//!             .idempotency_key(format!("welcome:{user}"));
//!         ids.push(jobs::enqueue_with("welcome", &serde_json::json!({ "user": user }), options)?);
//!     }
//!     Ok(ids)
//! }
//! ```

use std::time::Duration;

use serde::Serialize;

use crate::HostError;
use crate::bindings::runner::task::jobs as wit;

/// How to enqueue a job: queue, delay, idempotency key. All optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    queue: Option<String>,
    countdown: Option<Duration>,
    idempotency_key: Option<String>,
}

impl Options {
    /// The defaults: the task's default queue, no delay, no key.
    pub fn new() -> Self {
        Options::default()
    }

    /// Enqueues on this queue instead of the task's default one.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Runs the job no sooner than this long from now.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.countdown = Some(delay);
        self
    }

    /// A second enqueue with the same key returns the first job's id instead
    /// of enqueueing again.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    fn into_wit(self) -> wit::EnqueueOptions {
        wit::EnqueueOptions {
            queue: self.queue,
            countdown_ms: self
                .countdown
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            idempotency_key: self.idempotency_key,
        }
    }
}

/// Enqueues a job for `task` with `input` as its JSON input; returns the new
/// job's id.
pub fn enqueue<T: Serialize + ?Sized>(task: &str, input: &T) -> Result<String, HostError> {
    enqueue_with(task, input, Options::new())
}

/// Enqueues a job for `task` with `input` and `options`; returns the new
/// job's id.
pub fn enqueue_with<T: Serialize + ?Sized>(
    task: &str,
    input: &T,
    options: Options,
) -> Result<String, HostError> {
    let input = encode(task, input)?;
    enqueue_json(task, &input, options)
}

/// Enqueues a job whose input is already JSON text.
pub fn enqueue_json(task: &str, input: &str, options: Options) -> Result<String, HostError> {
    Ok(wit::enqueue(task, input, &options.into_wit())?)
}

fn encode<T: Serialize + ?Sized>(task: &str, input: &T) -> Result<String, HostError> {
    serde_json::to_string(input).map_err(|e| {
        HostError::Invalid(format!(
            "cannot encode the input for task {task:?} as JSON: {e}"
        ))
    })
}

/// A step of a workflow: a job, or a chain, group or chord of steps
/// (`docs/workflows.md` has the model). Built here, started with
/// [`start_workflow`]: every job of it is a child of the current job and
/// counts as one under the `jobs` grant.
///
/// ```no_run
/// use runner_sdk::{jobs::{self, Step}, TaskError};
///
/// fn batches(pieces: &[u32]) -> Result<String, TaskError> {
///     let mut chain: Vec<Step> = pieces
///         .chunks(5)
///         .map(|batch| Step::group(batch.iter().map(|n| Step::task("generate").input(&n)).collect()))
///         .collect();
///     chain.push(Step::task("finalise").collect());
///     Ok(jobs::start_workflow(&Step::chain(chain).on_error(Step::task("alert")))?)
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    value: serde_json::Value,
    /// Why an input could not be encoded, reported when it is started.
    error: Option<String>,
}

impl Step {
    /// A job of task `task` (its input: the output of the step before, or
    /// `null` for a first step, unless [`Step::input`] sets one).
    pub fn task(task: &str) -> Step {
        Step::of(serde_json::json!({ "task": task }))
    }

    /// Steps one after another: each gets the output of the one before.
    pub fn chain(steps: Vec<Step>) -> Step {
        Step::list("chain", steps)
    }

    /// Steps at the same time: the output is the list of theirs.
    pub fn group(steps: Vec<Step>) -> Step {
        Step::list("group", steps)
    }

    /// A group, then `callback` with the list of their outputs, once, and
    /// only if every member succeeded.
    pub fn chord(members: Vec<Step>, callback: Step) -> Step {
        let mut s = Step::list("chord", members);
        s.error = s.error.or(callback.error);
        s.value["callback"] = callback.value;
        s
    }

    /// This job's own input.
    pub fn input<T: Serialize + ?Sized>(mut self, input: &T) -> Step {
        match serde_json::to_value(input) {
            Ok(v) => self.value["input"] = v,
            Err(e) => self.error = Some(format!("cannot encode an input as JSON: {e}")),
        }
        self
    }

    /// With an own input (an object): the output of the step before is
    /// added to it under `key`.
    pub fn previous(mut self, key: &str) -> Step {
        self.value["previous"] = key.into();
        self
    }

    /// In a chain: this job gets the list of the outputs of every step
    /// before it in the chain.
    pub fn collect(mut self) -> Step {
        self.value["collect"] = true.into();
        self
    }

    /// This job's queue instead of its task's.
    pub fn queue(mut self, queue: &str) -> Step {
        self.value["queue"] = queue.into();
        self
    }

    /// Runs this job no sooner than this long after the step starts.
    pub fn countdown(mut self, delay: Duration) -> Step {
        self.value["countdown"] = delay.as_secs_f64().into();
        self
    }

    /// A job that runs once if a job under this step fails for good; it
    /// gets `{workflow, step, job, state, error}`.
    pub fn on_error(mut self, step: Step) -> Step {
        self.error = self.error.or(step.error);
        self.value["on_error"] = step.value;
        self
    }

    /// The step as the JSON of `POST /v1/workflows`'s `workflow` field.
    pub fn to_json(&self) -> Result<String, HostError> {
        match &self.error {
            Some(e) => Err(HostError::Invalid(e.clone())),
            None => Ok(self.value.to_string()),
        }
    }

    fn of(value: serde_json::Value) -> Step {
        Step { value, error: None }
    }

    fn list(kind: &str, steps: Vec<Step>) -> Step {
        let error = steps.iter().find_map(|s| s.error.clone());
        let list: Vec<serde_json::Value> = steps.into_iter().map(|s| s.value).collect();
        Step {
            value: serde_json::json!({ kind: list }),
            error,
        }
    }
}

/// How to start a workflow: an idempotency key (by default the runner
/// derives one from the current run, so a retried run starts a new one)
/// and how long its record is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowOptions {
    idempotency_key: Option<String>,
    ttl: Option<Duration>,
}

impl WorkflowOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// A second start with the same key returns the first workflow's id.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// How long the workflow's record is kept after it ends.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Starts `workflow` with its jobs as children of the current job; returns
/// the workflow's id (its state: `GET /v1/workflows/{id}`).
pub fn start_workflow(workflow: &Step) -> Result<String, HostError> {
    start_workflow_with(workflow, WorkflowOptions::new())
}

/// [`start_workflow`] with `options`.
pub fn start_workflow_with(workflow: &Step, options: WorkflowOptions) -> Result<String, HostError> {
    let json = workflow.to_json()?;
    let options = wit::WorkflowOptions {
        idempotency_key: options.idempotency_key,
        ttl_secs: options.ttl.map(|d| d.as_secs().max(1)),
    };
    Ok(wit::start_workflow(&json, &options)?)
}

/// Starts a chord of children: `members` at the same time, then `callback`
/// with the list of their outputs. Returns the workflow's id.
pub fn chord(members: Vec<Step>, callback: Step) -> Result<String, HostError> {
    start_workflow(&Step::chord(members, callback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_build_the_api_json() {
        let s = Step::chain(vec![
            Step::group(vec![Step::task("a").input(&1), Step::task("a").input(&2)]),
            Step::task("b")
                .input(&serde_json::json!({"x": 1}))
                .previous("parts")
                .queue("q")
                .countdown(Duration::from_millis(1500)),
            Step::task("c").collect(),
        ])
        .on_error(Step::task("alert"));
        let v: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "chain": [
                    {"group": [{"task": "a", "input": 1}, {"task": "a", "input": 2}]},
                    {"task": "b", "input": {"x": 1}, "previous": "parts", "queue": "q", "countdown": 1.5},
                    {"task": "c", "collect": true}
                ],
                "on_error": {"task": "alert"}
            })
        );
        let c = Step::chord(vec![Step::task("m")], Step::task("cb"));
        assert_eq!(
            c.to_json().unwrap(),
            r#"{"chord":[{"task":"m"}],"callback":{"task":"cb"}}"#
        );
        let bad: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        let broken = Step::group(vec![Step::task("a").input(&bad)]);
        assert!(matches!(broken.to_json(), Err(HostError::Invalid(m)) if m.contains("JSON")));
    }

    #[test]
    fn options_convert() {
        let o = Options::new()
            .queue("mail")
            .countdown(Duration::from_secs(2))
            .idempotency_key("k")
            .into_wit();
        assert_eq!(o.queue.as_deref(), Some("mail"));
        assert_eq!(o.countdown_ms, Some(2000));
        assert_eq!(o.idempotency_key.as_deref(), Some("k"));
        let d = Options::new().into_wit();
        assert!(d.queue.is_none() && d.countdown_ms.is_none() && d.idempotency_key.is_none());
    }

    #[test]
    fn inputs_encode_as_json() {
        assert_eq!(
            encode("t", &serde_json::json!({ "n": 1 })),
            Ok(r#"{"n":1}"#.to_string())
        );
        let bad: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        assert!(matches!(encode("t", &bad), Err(HostError::Invalid(m)) if m.contains("\"t\"")));
    }
}
