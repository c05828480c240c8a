//! The two error types a task deals with: [`TaskError`], how a run ends when
//! it does not succeed, and [`HostError`], how a host call (kv, mail, http,
//! ...) failed.

use std::fmt;

use crate::bindings;

/// Why a run did not succeed. The runner retries a job that ends with
/// [`TaskError::Retry`] (with backoff, until its retries are exhausted) and
/// fails a job that ends with [`TaskError::Fail`] at once.
///
/// A [`HostError`] converts into a `TaskError` (transient errors become
/// `Retry`, all others `Fail`), so `?` works on every host call:
///
/// ```no_run
/// use runner_sdk::{kv, TaskError};
///
/// fn remember(key: &str) -> Result<bool, TaskError> {
///     Ok(kv::set_nx(key, "1", None)?)
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// A transient failure: try the job again later.
    Retry(String),
    /// A permanent failure: retrying will not help.
    Fail(String),
}

impl TaskError {
    /// A transient failure: the runner retries the job per its retry policy.
    pub fn retry(message: impl fmt::Display) -> Self {
        TaskError::Retry(message.to_string())
    }

    /// A permanent failure: the job fails at once, without retry.
    pub fn fail(message: impl fmt::Display) -> Self {
        TaskError::Fail(message.to_string())
    }

    /// Whether the runner will retry the job.
    pub fn is_retry(&self) -> bool {
        matches!(self, TaskError::Retry(_))
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            TaskError::Retry(m) | TaskError::Fail(m) => m,
        }
    }

    /// Prefixes the message with `context` ("sending the reminder: ..."),
    /// keeping the kind.
    pub fn context(self, context: impl fmt::Display) -> Self {
        match self {
            TaskError::Retry(m) => TaskError::Retry(format!("{context}: {m}")),
            TaskError::Fail(m) => TaskError::Fail(format!("{context}: {m}")),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Retry(m) => write!(f, "retry: {m}"),
            TaskError::Fail(m) => write!(f, "fail: {m}"),
        }
    }
}

impl std::error::Error for TaskError {}

impl From<HostError> for TaskError {
    /// Transient host errors are worth retrying; denied, invalid, permanent
    /// and unavailable ones are not.
    fn from(err: HostError) -> Self {
        match err {
            HostError::Transient(m) => TaskError::Retry(m),
            other => TaskError::Fail(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for TaskError {
    /// JSON that does not fit the expected shape will not fit it on a retry
    /// either.
    fn from(err: serde_json::Error) -> Self {
        TaskError::Fail(err.to_string())
    }
}

impl From<TaskError> for bindings::TaskError {
    fn from(err: TaskError) -> Self {
        match err {
            TaskError::Retry(m) => bindings::TaskError::Retry(m),
            TaskError::Fail(m) => bindings::TaskError::Fail(m),
        }
    }
}

/// How a host call failed. Every capability reports the same kinds, so a task
/// decides in one place whether a failure is worth retrying
/// ([`HostError::is_transient`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The task's grant does not allow this call (capability not granted,
    /// host not in the allow-list, sender not allowed, root not granted).
    Denied(String),
    /// The job's soft time limit has passed: every capability is denied
    /// from now on. Finish up (save what is done, return) before the hard
    /// time limit stops the run ([`Context::deadline`](crate::Context::deadline)
    /// says how long that is).
    TimeUp(String),
    /// The arguments were wrong (bad address, path, URL; value too large).
    Invalid(String),
    /// A temporary failure (connection failed, timeout, SMTP 4xx): retrying
    /// later may succeed.
    Transient(String),
    /// A permanent failure from the other side (SMTP 5xx, quota exceeded).
    Permanent(String),
    /// This runner does not provide the capability.
    Unavailable(String),
}

impl HostError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, HostError::Transient(_))
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            HostError::Denied(m)
            | HostError::TimeUp(m)
            | HostError::Invalid(m)
            | HostError::Transient(m)
            | HostError::Permanent(m)
            | HostError::Unavailable(m) => m,
        }
    }

    /// The kind as a word: "denied", "time up", "invalid", "transient",
    /// "permanent" or "unavailable".
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::Denied(_) => "denied",
            HostError::TimeUp(_) => "time up",
            HostError::Invalid(_) => "invalid",
            HostError::Transient(_) => "transient",
            HostError::Permanent(_) => "permanent",
            HostError::Unavailable(_) => "unavailable",
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for HostError {}

/// How the runner's message starts when it denies a call because the
/// soft time limit has passed.
const SOFT_TIME_LIMIT: &str = "soft time limit";

impl From<bindings::runner::task::types::HostError> for HostError {
    fn from(err: bindings::runner::task::types::HostError) -> Self {
        use bindings::runner::task::types::HostError as Wit;
        match err {
            Wit::Denied(m) if m.starts_with(SOFT_TIME_LIMIT) => HostError::TimeUp(m),
            Wit::Denied(m) => HostError::Denied(m),
            Wit::Invalid(m) => HostError::Invalid(m),
            Wit::Transient(m) => HostError::Transient(m),
            Wit::Permanent(m) => HostError::Permanent(m),
            Wit::Unavailable(m) => HostError::Unavailable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_host_errors_are_retried_others_fail() {
        assert_eq!(
            TaskError::from(HostError::Transient("smtp 451".into())),
            TaskError::Retry("smtp 451".into())
        );
        for err in [
            HostError::Denied("no grant".into()),
            HostError::Invalid("bad address".into()),
            HostError::Permanent("smtp 550".into()),
            HostError::Unavailable("no mail server".into()),
        ] {
            let kind = err.kind();
            let task = TaskError::from(err);
            assert!(!task.is_retry(), "{kind} must not be retried");
            assert!(task.message().starts_with(kind), "{task}");
        }
    }

    #[test]
    fn a_call_denied_past_the_soft_time_limit_is_time_up() {
        use bindings::runner::task::types::HostError as Wit;
        let past = "soft time limit: the job's soft time limit (300 ms) has passed; finish up";
        let err = HostError::from(Wit::Denied(past.into()));
        assert_eq!(err, HostError::TimeUp(past.into()));
        assert_eq!(err.kind(), "time up");
        assert!(!TaskError::from(err).is_retry());
        let err = HostError::from(Wit::Denied("this task is not granted `kv`".into()));
        assert!(matches!(err, HostError::Denied(_)), "{err}");
    }

    #[test]
    fn question_mark_converts_host_errors() {
        fn call() -> Result<(), TaskError> {
            Err(HostError::Transient("timeout".into()))?;
            Ok(())
        }
        assert_eq!(call(), Err(TaskError::Retry("timeout".into())));
    }

    #[test]
    fn constructors_and_context() {
        let err = TaskError::fail(format_args!("bad {}", 42)).context("loading");
        assert_eq!(err, TaskError::Fail("loading: bad 42".into()));
        assert_eq!(err.to_string(), "fail: loading: bad 42");
        let err = TaskError::retry("busy");
        assert!(err.is_retry());
        assert_eq!(err.to_string(), "retry: busy");
    }

    #[test]
    fn wit_host_errors_map_to_the_same_kind() {
        use bindings::runner::task::types::HostError as Wit;
        assert_eq!(
            HostError::from(Wit::Denied("x".into())),
            HostError::Denied("x".into())
        );
        assert_eq!(
            HostError::from(Wit::Unavailable("y".into())).to_string(),
            "unavailable: y"
        );
    }

    #[test]
    fn task_errors_map_to_the_wit_variant() {
        assert!(matches!(
            bindings::TaskError::from(TaskError::retry("r")),
            bindings::TaskError::Retry(m) if m == "r"
        ));
        assert!(matches!(
            bindings::TaskError::from(TaskError::fail("f")),
            bindings::TaskError::Fail(m) if m == "f"
        ));
    }
}
