//! Enqueues other jobs (fan-out), as children of the current job. Needs the
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

#[cfg(test)]
mod tests {
    use super::*;

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
