//! [`Context`]: what a task knows about the job it runs, and how it reports
//! progress and log lines back to the runner.

use std::cell::OnceCell;
use std::time::Duration;

use crate::bindings::runner::task::context as wit;

/// The job being run, as the runner describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    /// The job's id (a UUIDv7, sortable by creation time).
    pub id: String,
    /// 1 on the first run, 2 on the first retry, and so on.
    pub attempt: u32,
    /// How many retries the job's policy allows in total.
    pub max_retries: u32,
    /// The queue the job was taken from.
    pub queue: String,
    /// The task name the job was enqueued for (empty when run by hash, e.g.
    /// with `runner run`).
    pub task: String,
    /// The beat (schedule) that enqueued this job, if any.
    pub schedule: Option<String>,
    /// For scheduled jobs: the due time of the fire, RFC 3339 in UTC.
    pub scheduled_for: Option<String>,
}

impl JobInfo {
    /// Whether a [`TaskError::Retry`](crate::TaskError::Retry) from this run
    /// would still be retried: false on the last allowed attempt.
    pub fn can_retry(&self) -> bool {
        self.attempt <= self.max_retries
    }
}

impl From<wit::JobInfo> for JobInfo {
    fn from(job: wit::JobInfo) -> Self {
        JobInfo {
            id: job.id,
            attempt: job.attempt,
            max_retries: job.max_retries,
            queue: job.queue,
            task: job.task,
            schedule: job.schedule,
            scheduled_for: job.scheduled_for,
        }
    }
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Details useful when debugging.
    Debug,
    /// Normal progress worth recording.
    Info,
    /// Something unexpected that the task handled.
    Warn,
    /// Something failed.
    Error,
}

impl From<Level> for wit::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        }
    }
}

/// What is left of a run's budget ([`Context::deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Until the hard time limit stops the run.
    pub time_left: Duration,
    /// Until the job's soft time limit, if it has one (zero once passed).
    pub soft_time_left: Option<Duration>,
    /// Fuel left, when the runner meters fuel (as of its last check, at
    /// most ten milliseconds old).
    pub fuel_left: Option<u64>,
}

/// The running job's context, passed to the task function by
/// [`#[task]`](crate::task).
///
/// Log lines written here are structured (level + message) and stored with
/// the job; plain `println!`/`eprintln!` output is captured too, as the job's
/// stdout/stderr.
///
/// ```no_run
/// use runner_sdk::{task, Context, TaskError};
///
/// #[task]
/// fn run(ctx: &Context, items: Vec<String>) -> Result<usize, TaskError> {
///     let total = items.len() as u64;
///     for (i, item) in items.iter().enumerate() {
///         ctx.info(format!("processing {item}"));
///         ctx.progress(i as u64 + 1, total);
///     }
///     Ok(items.len())
/// }
/// ```
#[derive(Debug)]
pub struct Context {
    // Fetched on first use: a task that never asks pays no host call.
    job: OnceCell<JobInfo>,
}

impl Context {
    /// Only the `#[task]` glue creates contexts.
    pub(crate) fn new() -> Self {
        Context {
            job: OnceCell::new(),
        }
    }

    /// The job being run: id, attempt, queue, task name, schedule.
    pub fn job(&self) -> &JobInfo {
        self.job.get_or_init(|| wit::job().into())
    }

    /// What is left of the run's budget: time until the hard limit stops
    /// it, until the soft limit (after which every capability answers
    /// [`HostError::TimeUp`](crate::HostError::TimeUp)), and fuel. One
    /// host call each time: cheap, but not free in a hot loop.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use runner_sdk::{task, Context, TaskError};
    ///
    /// #[task]
    /// fn run(ctx: &Context, items: Vec<String>) -> Result<usize, TaskError> {
    ///     let mut done = 0;
    ///     for item in &items {
    ///         if ctx.deadline().soft_time_left == Some(Duration::ZERO) {
    ///             break; // return what is done; the rest waits for next time
    ///         }
    ///         ctx.info(format!("processing {item}"));
    ///         done += 1;
    ///     }
    ///     Ok(done)
    /// }
    /// ```
    pub fn deadline(&self) -> Deadline {
        let d = wit::deadline();
        Deadline {
            time_left: Duration::from_millis(d.time_left_ms),
            soft_time_left: d.soft_time_left_ms.map(Duration::from_millis),
            fuel_left: d.fuel_left,
        }
    }

    /// Reports progress: `done` of `total` units. Watchers of the job (API
    /// events, dashboard) see it at once.
    pub fn progress(&self, done: u64, total: u64) {
        wit::progress(done, total, None);
    }

    /// Reports progress with a short message ("sent 3 of 10 reminders").
    pub fn progress_with(&self, done: u64, total: u64, message: impl AsRef<str>) {
        wit::progress(done, total, Some(message.as_ref()));
    }

    /// Writes a log line with the given level into the job's log.
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        wit::log(level.into(), message.as_ref());
    }

    /// Writes a [`Level::Trace`] line.
    pub fn trace(&self, message: impl AsRef<str>) {
        self.log(Level::Trace, message);
    }

    /// Writes a [`Level::Debug`] line.
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(Level::Debug, message);
    }

    /// Writes a [`Level::Info`] line.
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::Info, message);
    }

    /// Writes a [`Level::Warn`] line.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::Warn, message);
    }

    /// Writes a [`Level::Error`] line.
    pub fn error(&self, message: impl AsRef<str>) {
        self.log(Level::Error, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(attempt: u32, max_retries: u32) -> JobInfo {
        JobInfo {
            id: "0192".into(),
            attempt,
            max_retries,
            queue: "default".into(),
            task: "t".into(),
            schedule: None,
            scheduled_for: None,
        }
    }

    #[test]
    fn can_retry_until_the_last_attempt() {
        assert!(job(1, 2).can_retry());
        assert!(job(2, 2).can_retry());
        assert!(!job(3, 2).can_retry());
        assert!(!job(1, 0).can_retry());
    }

    #[test]
    fn job_info_converts_from_wit() {
        let wit_job = wit::JobInfo {
            id: "id".into(),
            attempt: 2,
            max_retries: 5,
            queue: "q".into(),
            task: "reminder".into(),
            schedule: Some("daily".into()),
            scheduled_for: Some("2026-11-22T00:00:00Z".into()),
        };
        let job = JobInfo::from(wit_job);
        assert_eq!(job.attempt, 2);
        assert_eq!(job.schedule.as_deref(), Some("daily"));
        assert_eq!(job.scheduled_for.as_deref(), Some("2026-11-22T00:00:00Z"));
    }

    #[test]
    fn levels_map_one_to_one() {
        assert!(matches!(wit::Level::from(Level::Warn), wit::Level::Warn));
        assert!(matches!(wit::Level::from(Level::Trace), wit::Level::Trace));
        assert!(Level::Error > Level::Info);
    }
}
