//! `runner:task/context`: the job the task runs for, progress, log lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::queue::job::{MAX_MESSAGE_BYTES, MAX_PROGRESS_MESSAGE_BYTES, cap_text, log_line_bytes};
use crate::sandbox::bindings::runner::task::context::{self, Level};
use crate::sandbox::run::RunState;

/// A `context.progress` report: `done` of `total` units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub message: Option<String>,
}

/// Where progress goes while a job runs (events, the dashboard, a terminal).
/// Called on the run's task: it must not block.
pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogLevel::Trace => "TRACE",
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Error => "ERROR",
        })
    }
}

/// One `context.log` line of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
    /// Time since the run started.
    #[serde(with = "millis")]
    pub at: Duration,
}

/// A run's log lines, capped in total bytes like its stdout and stderr
/// (each line counting [`log_line_bytes`]).
#[derive(Debug, Default)]
pub(crate) struct LogBook {
    pub(crate) lines: Vec<LogLine>,
    bytes: usize,
    cap: usize,
    pub(crate) dropped: u64,
}

impl LogBook {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// Whether a line of `message` fits within the cap.
    fn fits(&self, message: &str) -> bool {
        self.bytes.saturating_add(log_line_bytes(message)) <= self.cap
    }

    fn push(&mut self, line: LogLine) {
        let bytes = log_line_bytes(&line.message);
        if !self.fits(&line.message) {
            self.dropped += 1;
            return;
        }
        self.bytes += bytes;
        self.lines.push(line);
    }
}

impl From<Level> for LogLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        }
    }
}

impl context::Host for RunState {
    async fn job(&mut self) -> wasmtime::Result<context::JobInfo> {
        let job = &self.job;
        Ok(context::JobInfo {
            id: job.id.clone(),
            attempt: job.attempt,
            max_retries: job.max_retries,
            queue: job.queue.clone(),
            task: job.task.clone(),
            schedule: job.schedule.clone(),
            scheduled_for: job.scheduled_for.clone(),
        })
    }

    async fn progress(
        &mut self,
        done: u64,
        total: u64,
        message: Option<String>,
    ) -> wasmtime::Result<()> {
        let progress = Progress {
            done,
            total,
            message: message.map(|m| cap_text(m, MAX_PROGRESS_MESSAGE_BYTES)),
        };
        if let Some(sink) = &self.host.progress {
            sink(&progress);
        }
        self.last_progress = Some(progress);
        Ok(())
    }

    async fn deadline(&mut self) -> wasmtime::Result<context::TimeLeft> {
        let now = Instant::now();
        let left = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        Ok(context::TimeLeft {
            time_left_ms: left(self.deadline),
            soft_time_left_ms: self.soft_deadline.map(left),
            fuel_left: self
                .fuel_budget
                .map(|budget| budget.saturating_sub(self.meter.used())),
        })
    }

    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = LogLevel::from(level);
        let message = cap_text(message, MAX_MESSAGE_BYTES);
        let at = self.started.elapsed();
        // Only what the run's log keeps goes to the host's log too: past
        // the run's cap, lines are counted, not written anywhere.
        if self.logs.fits(&message) {
            tracing::debug!(target: "runner::guest", job = %self.job.id, %level, "{message}");
        }
        self.logs.push(LogLine { level, message, at });
        Ok(())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
