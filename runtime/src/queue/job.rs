//! The job model: what a producer asks for, what a worker runs, and the
//! record that a status query returns.
//!
//! A job record is stored as one JSON document. `state` is serialised first
//! on purpose: the Redis scripts read it with a prefix match instead of
//! decoding (and never re-encode a record, so numbers are never mangled by
//! Lua's number formatting).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::ModuleHash;

/// The longest delay a job's times may have from now (a countdown, an
/// expiry, a retry's backoff): 100 years. Longer is refused by name, never
/// left to overflow a timestamp.
pub const MAX_DELAY: Duration = Duration::from_secs(100 * 36_525 * 864);

/// The documented maxima of a job's numbers. Above one, a request is
/// refused with a 400 that names the field, whoever sends it (an admin
/// included); a binding above one is refused when it is made.
///
/// The longest time limit of one run: a day. Longer work belongs in
/// several jobs (a chain, or a job that re-enqueues itself).
pub const MAX_TIME_LIMIT_MS: u64 = 24 * 3600 * 1000;
/// The largest fuel budget: 10^15, more than a day of instructions.
pub const MAX_FUEL: u64 = 1_000_000_000_000_000;
/// The largest memory a run may ask for: what a 32-bit linear memory can
/// address (the worker's sandbox caps it lower, `max_memory_bytes`).
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// The most retries a policy may allow.
pub const MAX_RETRIES: u32 = 1000;

/// The longest message a job record keeps (a failure's, a retry's reason;
/// a host call's error as the task sees it): 4 KiB. Longer is cut where it
/// is produced, saying how much was dropped ([`cap_text`]), so that no
/// task can fill records, dead letters (kept 7 days), events or logs.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// The longest progress message: 1 KiB.
pub const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;

pub use runner_host_fns::error::cap_text;

/// The queue of a job that names none and whose task binding names none.
pub const DEFAULT_QUEUE: &str = "default";
/// Results and errors are kept this long unless the job says otherwise (the
/// scenario's fix: one hour, not a day).
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(3600);
/// Dead letters outlive ordinary results so that an operator can replay them.
pub const DEAD_LETTER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A job id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({self})")
    }
}

impl FromStr for JobId {
    type Err = JobError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(JobId)
            .map_err(|e| JobError::InvalidId(format!("{s:?}: {e}")))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Pending,
    Started,
    Retry,
    Success,
    Failure,
    Revoked,
    Expired,
}

impl JobState {
    /// A final state never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Success | JobState::Failure | JobState::Revoked | JobState::Expired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Started => "STARTED",
            JobState::Retry => "RETRY",
            JobState::Success => "SUCCESS",
            JobState::Failure => "FAILURE",
            JobState::Revoked => "REVOKED",
            JobState::Expired => "EXPIRED",
        }
    }
}

impl FromStr for JobState {
    type Err = JobError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "PENDING" => JobState::Pending,
            "STARTED" => JobState::Started,
            "RETRY" => JobState::Retry,
            "SUCCESS" => JobState::Success,
            "FAILURE" => JobState::Failure,
            "REVOKED" => JobState::Revoked,
            "EXPIRED" => JobState::Expired,
            other => return Err(JobError::InvalidState(other.to_string())),
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Kinds of failure a retry policy may opt into retrying. A task's `retry`
/// error and infrastructure failures are always retried.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Fail,
    FuelExhausted,
    MemoryLimit,
    TimeLimit,
    Trap,
    InvalidOutput,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    #[schema(maximum = 1000)]
    pub max_retries: u32,
    /// First retry waits about this long; each further one doubles it.
    #[schema(maximum = 3_155_760_000_000_u64)]
    pub backoff_base_ms: u64,
    #[schema(maximum = 3_155_760_000_000_u64)]
    pub backoff_cap_ms: u64,
    /// Full jitter: the delay is drawn uniformly from [delay/2, delay].
    pub jitter: bool,
    /// Final failures that are nevertheless retried under this policy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<FailureKind>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // The scenario's policy: 3 retries, 60 s base, capped at 600 s, jitter.
        RetryPolicy {
            max_retries: 3,
            backoff_base_ms: 60_000,
            backoff_cap_ms: 600_000,
            jitter: true,
            retry_on: Vec::new(),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Default::default()
        }
    }

    /// Delay before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(32);
        let raw = self.backoff_base_ms.saturating_mul(1u64 << exp);
        let capped = raw.min(self.backoff_cap_ms.max(self.backoff_base_ms));
        let ms = if self.jitter && capped > 1 {
            rand::random_range(capped / 2..=capped)
        } else {
            capped
        };
        Duration::from_millis(ms)
    }

    pub fn retries(&self, kind: FailureKind) -> bool {
        self.retry_on.contains(&kind)
    }

    /// Refuses numbers above their maxima ([`MAX_RETRIES`], backoffs of at
    /// most [`MAX_DELAY`]).
    pub fn check(&self) -> Result<(), JobError> {
        let max_backoff = MAX_DELAY.as_millis() as u64;
        at_most(
            "retry.max_retries",
            self.max_retries.into(),
            MAX_RETRIES.into(),
        )?;
        at_most("retry.backoff_base_ms", self.backoff_base_ms, max_backoff)?;
        at_most("retry.backoff_cap_ms", self.backoff_cap_ms, max_backoff)
    }
}

/// `value` of `field` if it is at most `max`, else [`JobError::AboveMaximum`].
fn at_most(field: &'static str, value: u64, max: u64) -> Result<(), JobError> {
    if value > max {
        return Err(JobError::AboveMaximum { field, value, max });
    }
    Ok(())
}

/// Resource limits for one run. `None` means the worker's default.
#[derive(Clone, Default, PartialEq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 86_400_000_u64)]
    pub time_limit_ms: Option<u64>,
    /// After this long, every capability call of the run is denied with
    /// "soft time limit ..." (the SDK's `HostError::TimeUp`): the task
    /// finishes up before `time_limit_ms` stops it (Celery's soft time
    /// limit). `context.deadline` shows both.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 86_400_000_u64)]
    pub soft_time_limit_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1_000_000_000_000_000_u64)]
    pub fuel: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 4_294_967_296_u64)]
    pub memory_bytes: Option<u64>,
}

impl JobLimits {
    /// Refuses numbers above their maxima ([`MAX_TIME_LIMIT_MS`],
    /// [`MAX_FUEL`], [`MAX_MEMORY_BYTES`]), and a time limit of 0 (whether
    /// such a run did anything depended on how fast it was).
    pub fn check(&self) -> Result<(), JobError> {
        if self.time_limit_ms == Some(0) {
            return Err(JobError::BelowMinimum {
                field: "limits.time_limit_ms",
                value: 0,
                min: 1,
            });
        }
        let checks = [
            (
                "limits.time_limit_ms",
                self.time_limit_ms,
                MAX_TIME_LIMIT_MS,
            ),
            (
                "limits.soft_time_limit_ms",
                self.soft_time_limit_ms,
                MAX_TIME_LIMIT_MS,
            ),
            ("limits.fuel", self.fuel, MAX_FUEL),
            ("limits.memory_bytes", self.memory_bytes, MAX_MEMORY_BYTES),
        ];
        for (field, value, max) in checks {
            if let Some(v) = value {
                at_most(field, v, max)?;
            }
        }
        Ok(())
    }
}

/// The longest window a rate limit may have: 366 days (its log's keys
/// live twice as long; the brokers do arithmetic on it).
pub const MAX_RATE_PERIOD_MS: u64 = 366 * 86_400_000;

/// A global rate limit: at most `count` starts in any window of `period_ms`,
/// shared by every worker. `key` names what is limited (`task:send_mail`,
/// `queue:email`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RateLimit {
    pub key: String,
    pub count: u32,
    pub period_ms: u64,
}

impl RateLimit {
    /// Parses `10/m`, `30/m`, `5/2s`, `100/h`, `2/500ms` for `key`.
    pub fn parse(key: impl Into<String>, spec: &str) -> Result<Self, JobError> {
        let bad = |why: &str| JobError::InvalidRateLimit(format!("{spec:?}: {why}"));
        let (count, per) = spec
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("expected N/period, e.g. 10/m"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a whole number"))?;
        if count == 0 {
            return Err(bad("the count must be at least 1"));
        }
        let per = per.trim();
        let split = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
        let (n, unit) = per.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| bad("bad period"))?
        };
        let unit_ms = match unit {
            "ms" => 1,
            "s" | "sec" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad("the period unit must be ms, s, m, h or d")),
        };
        let period_ms = n.saturating_mul(unit_ms);
        if period_ms == 0 {
            return Err(bad("the period must be positive"));
        }
        if period_ms > MAX_RATE_PERIOD_MS {
            return Err(bad("the period must be at most 366d"));
        }
        Ok(RateLimit {
            key: key.into(),
            count,
            period_ms,
        })
    }

    /// The limit as it is written (`30/m`, `5/2s`), in the largest unit
    /// that divides its period.
    pub fn spec(&self) -> String {
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
        ];
        let (n, unit) = units
            .iter()
            .find(|(u, _)| self.period_ms.is_multiple_of(*u))
            .map_or((self.period_ms, "ms"), |(u, name)| {
                (self.period_ms / u, name)
            });
        if n == 1 {
            format!("{}/{unit}", self.count)
        } else {
            format!("{}/{n}{unit}", self.count)
        }
    }
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a job failed (or why its last attempt failed, on RETRY).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobFailure {
    /// `retry`, `fail`, `fuel_exhausted`, `memory_limit`, `time_limit`,
    /// `trap`, `invalid_output`, `infrastructure`, `lost_lease`, `revoked`,
    /// `expired`.
    pub kind: String,
    pub message: String,
}

impl JobFailure {
    /// A failure of `kind`; `message` is capped at [`MAX_MESSAGE_BYTES`].
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        JobFailure {
            kind: kind.into(),
            message: cap_text(message.into(), MAX_MESSAGE_BYTES),
        }
    }
}

/// The stored job: spec, state and outcome in one document.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    /// Must stay the first field: see the module docs.
    pub state: JobState,
    pub id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// `sha256:<hex>`; resolved from the task binding at run time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleHash>,
    /// JSON text, validated at enqueue (the API shows it parsed).
    #[schema(value_type = Value)]
    pub input: String,
    pub queue: String,
    /// 1 for the first run, 2 for the first retry, ...
    pub attempt: u32,
    pub retry: RetryPolicy,
    #[serde(default)]
    pub limits: JobLimits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<JobId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<JobId>,
    /// Generations above this job: 0 for a job enqueued from outside, its
    /// parent's depth plus one for a child (bounded by the jobs grant).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
    /// The workflow this job is a step of, and where in it
    /// (`workflow.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowRef>,
    /// The beat that enqueued this job, if a scheduler did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The due time of that beat's fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    pub result_ttl_ms: u64,
    /// Store no result: the job's state is kept (for `result_ttl_ms`),
    /// its output is not.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_result: bool,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker running (or that ran) the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// JSON text of the task's output, on SUCCESS (the API shows it parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
    /// Times the job was handed out again because its lease ran out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redeliveries: u32,
    /// 0 (the default) to [`MAX_PRIORITY`]: within its queue, a ready job
    /// of higher priority is leased before every job of lower priority
    /// (strictly: low ones wait while higher ones keep coming).
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    #[schema(maximum = 9)]
    pub priority: u8,
    /// Fuel its last run used (when the worker meters fuel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_used: Option<u64>,
    /// The peak linear memory of its last run, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// The lines its last run logged (`context.log`), the last ones that
    /// fit in [`MAX_RECORD_LOG_BYTES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogEntry>,
}

/// Where a job stands in a workflow: the workflow's id and the step's
/// path in its request (`workflow.chain[2].group[0]`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkflowRef {
    pub id: JobId,
    pub path: String,
}

/// A line a task logged.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// TRACE, DEBUG, INFO, WARN or ERROR.
    pub level: String,
    pub message: String,
    /// Milliseconds from the start of the run.
    pub at_ms: u64,
}

/// The most log text a job record keeps, in bytes counted by
/// [`log_line_bytes`]: the last lines that fit, after a line saying how
/// many earlier ones were dropped.
pub const MAX_RECORD_LOG_BYTES: usize = 16 * 1024;

/// What one log line counts against a cap on log bytes besides its
/// message: its level and time (`{"level":"INFO","message":"","at_ms":0}`
/// is 40 bytes of JSON, more in memory). Without it, empty lines passed
/// every cap.
pub const LOG_LINE_OVERHEAD: usize = 64;

/// The bytes a log line of `message` counts against a cap.
pub fn log_line_bytes(message: &str) -> usize {
    message.len().saturating_add(LOG_LINE_OVERHEAD)
}

/// The lines of `log` a record keeps (see [`MAX_RECORD_LOG_BYTES`]).
pub fn kept_log(mut log: Vec<LogEntry>) -> Vec<LogEntry> {
    let mut bytes = 0;
    let mut keep = log
        .iter()
        .rev()
        .take_while(|l| {
            bytes += log_line_bytes(&l.message);
            bytes <= MAX_RECORD_LOG_BYTES
        })
        .count();
    if keep == 0
        && let Some(last) = log.last_mut()
    {
        // The last line alone is over the cap (a line from anywhere but
        // `context.log`, which caps its own): keep its start.
        last.message = cap_text(std::mem::take(&mut last.message), MAX_MESSAGE_BYTES);
        keep = 1;
    }
    let dropped = log.len() - keep;
    if dropped == 0 {
        return log;
    }
    let first_kept = log[dropped].at_ms;
    let mut out = vec![LogEntry {
        level: "WARN".into(),
        message: format!("[{dropped} earlier lines not kept]"),
        at_ms: first_kept,
    }];
    out.extend(log.drain(dropped..));
    out
}

/// The highest job priority.
pub const MAX_PRIORITY: u8 = 9;

pub(crate) fn is_zero_u8(n: &u8) -> bool {
    *n == 0
}

/// Checks a priority from a request or a binding.
pub fn check_priority(field: &'static str, p: u64) -> Result<u8, JobError> {
    u8::try_from(p)
        .ok()
        .filter(|p| *p <= MAX_PRIORITY)
        .ok_or(JobError::AboveMaximum {
            field,
            value: p,
            max: MAX_PRIORITY.into(),
        })
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Job {
    /// A first attempt of a new job on `queue` with `input` (JSON text),
    /// created `now`: no task or module yet, default retry policy and
    /// limits, no rate limit, due at once, results kept for
    /// [`DEFAULT_RESULT_TTL`]. Producers fill in the rest.
    pub fn new(queue: impl Into<String>, input: impl Into<String>, now: DateTime<Utc>) -> Job {
        Job {
            state: JobState::Pending,
            id: JobId::new(),
            task: None,
            module: None,
            input: input.into(),
            queue: queue.into(),
            attempt: 1,
            retry: RetryPolicy::default(),
            limits: JobLimits::default(),
            rate_limits: Vec::new(),
            eta: None,
            expires: None,
            idempotency_key: None,
            parent: None,
            children: Vec::new(),
            depth: 0,
            workflow: None,
            schedule: None,
            scheduled_for: None,
            result_ttl_ms: DEFAULT_RESULT_TTL.as_millis() as u64,
            ignore_result: false,
            created_at: now,
            started_at: None,
            finished_at: None,
            worker: None,
            progress: None,
            result: None,
            error: None,
            redeliveries: 0,
            priority: 0,
            fuel_used: None,
            memory_peak_bytes: None,
            log: Vec::new(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising this struct cannot fail: every field is a plain value.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Self, JobError> {
        serde_json::from_str(s).map_err(|e| JobError::Corrupt(e.to_string()))
    }

    /// The result value as JSON, when the job succeeded.
    pub fn result_value(&self) -> Option<serde_json::Value> {
        self.result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
    }

    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// Why a job that expired before it ran ended.
    pub fn expiry_failure() -> JobFailure {
        JobFailure::new("expired", "the job expired before it could run")
    }

    /// This job as a lookup at `now` shows it: one still waiting (not
    /// leased) past its expiry, in a queue no worker reads say, is EXPIRED,
    /// as the worker that takes it will settle it. Its record goes a result
    /// TTL after its expiry, worker or not.
    pub fn show_expired(&mut self, now: DateTime<Utc>) {
        if matches!(self.state, JobState::Pending | JobState::Retry) && self.is_expired_at(now) {
            self.state = JobState::Expired;
            self.finished_at = self.expires;
            self.error = Some(Self::expiry_failure());
        }
    }

    /// This job's final record when it is revoked (`message` says when),
    /// stamped `at`.
    pub fn revoked(&self, message: impl Into<String>, at: DateTime<Utc>) -> Job {
        let mut j = self.clone();
        j.state = JobState::Revoked;
        j.finished_at = Some(at);
        j.error = Some(JobFailure::new("revoked", message));
        j
    }

    /// This job as a dead letter put back in its queue: a fresh first
    /// attempt with no trace of the runs that failed.
    pub fn fresh_attempt(&self) -> Job {
        let mut j = self.clone();
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
}

/// Validates a queue name: short, printable, no spaces or braces (braces
/// would break the `{queue}` hash tag).
pub fn validate_queue_name(name: &str) -> Result<(), JobError> {
    let bad = |why: &str| JobError::InvalidQueue {
        name: name.to_string(),
        reason: why.to_string(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 100 {
        return Err(bad("it is longer than 100 bytes"));
    }
    // A URL resolves these segments away: `/v1/queues/../purge` is
    // `/v1/purge`, so no client could name the queue to the API.
    if name == "." || name == ".." {
        return Err(bad("\".\" and \"..\" are not names a URL can carry"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        let what = if c.is_whitespace() {
            "spaces are not allowed".to_string()
        } else {
            format!("{c:?} is not allowed (use letters, digits, '-', '_', '.', ':')")
        };
        return Err(bad(&what));
    }
    Ok(())
}

/// Bad input to the job model. Nothing is enqueued when one of these comes back.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum JobError {
    #[error("unknown task {0:?}: bind it to a module first")]
    UnknownTask(String),
    #[error("invalid JSON input at line {line}, column {column}: {message}")]
    InvalidJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("countdown must not be negative (got {0} s)")]
    NegativeCountdown(f64),
    #[error("{field} must be a number of seconds from 0 to {max} (got {value})")]
    OutOfRange {
        field: &'static str,
        value: f64,
        max: f64,
    },
    #[error("{field} is {value}, above its maximum of {max}")]
    AboveMaximum {
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{field} is {value}, below its minimum of {min}")]
    BelowMinimum {
        field: &'static str,
        value: u64,
        min: u64,
    },
    #[error("{field}: {reason}")]
    Forbidden { field: &'static str, reason: String },
    #[error("{field} and {other} both set the same time: give one of them")]
    Both {
        field: &'static str,
        other: &'static str,
    },
    #[error("{field} {at} is more than 100 years from now")]
    TooFar {
        field: &'static str,
        at: DateTime<Utc>,
    },
    #[error("{field}: the expiry {at} is in the past")]
    ExpiryInPast {
        field: &'static str,
        at: DateTime<Utc>,
    },
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueue { name: String, reason: String },
    #[error("invalid rate limit {0}")]
    InvalidRateLimit(String),
    #[error("a job needs a task name or a module hash")]
    NoTask,
    #[error("invalid job id {0}")]
    InvalidId(String),
    #[error("invalid job state {0:?}")]
    InvalidState(String),
    #[error("invalid module hash {0:?}: expected sha256:<64 hex digits>")]
    InvalidModuleHash(String),
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    #[error("stored job record is corrupt: {0}")]
    Corrupt(String),
}

/// Checks that `input` is JSON; the error carries line and column.
pub fn validate_json(input: &str) -> Result<(), JobError> {
    serde_json::from_str::<serde::de::IgnoredAny>(input)
        .map(|_| ())
        .map_err(|e| {
            let text = e.to_string();
            // serde_json appends the position, which the error shows already.
            let message = match text.rsplit_once(" at line ") {
                Some((m, _)) => m.to_string(),
                None => text,
            };
            JobError::InvalidJson {
                line: e.line(),
                column: e.column(),
                message,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_the_last_log_lines_that_fit() {
        let line = |i: u64, len: usize| LogEntry {
            level: "INFO".into(),
            message: "x".repeat(len),
            at_ms: i,
        };
        let few = vec![line(1, 10), line(2, 10)];
        assert_eq!(kept_log(few.clone()), few);
        let many: Vec<LogEntry> = (0..10).map(|i| line(i, 4000)).collect();
        let kept = kept_log(many);
        assert_eq!(kept.len(), 5, "a note and the last four of 4,000 bytes");
        assert_eq!(kept[0].message, "[6 earlier lines not kept]");
        assert_eq!(kept[0].at_ms, 6);
        assert_eq!(kept[4].at_ms, 9);
    }

    /// A last line over the whole cap (one long line of stdout) once made
    /// the worker panic here, and the job was retried as "infrastructure".
    #[test]
    fn a_record_keeps_the_start_of_a_last_line_over_the_cap() {
        let long = |at_ms: u64| LogEntry {
            level: "INFO".into(),
            message: "y".repeat(2 * MAX_RECORD_LOG_BYTES),
            at_ms,
        };
        let kept = kept_log(vec![long(7)]);
        assert_eq!(kept.len(), 1);
        assert!(kept[0].message.len() <= MAX_MESSAGE_BYTES);
        assert!(kept[0].message.starts_with("yyyy"), "{}", kept[0].message);
        assert!(
            kept[0].message.ends_with("more bytes]"),
            "{}",
            kept[0].message
        );
        let kept = kept_log(vec![long(1), long(2), long(3)]);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].message, "[2 earlier lines not kept]");
        assert_eq!((kept[0].at_ms, kept[1].at_ms), (3, 3));
        assert!(kept[1].message.len() <= MAX_MESSAGE_BYTES);
    }

    /// Empty lines count too: a task logging nothing a million times once
    /// filled its record with all of them.
    #[test]
    fn a_record_keeps_a_bounded_number_of_empty_log_lines() {
        let empty: Vec<LogEntry> = (0..100_000)
            .map(|i| LogEntry {
                level: "INFO".into(),
                message: String::new(),
                at_ms: i,
            })
            .collect();
        let kept = kept_log(empty);
        assert_eq!(kept.len(), 1 + MAX_RECORD_LOG_BYTES / LOG_LINE_OVERHEAD);
        let json = serde_json::to_string(&kept).unwrap();
        assert!(
            json.len() <= 2 * MAX_RECORD_LOG_BYTES,
            "{} bytes",
            json.len()
        );
    }

    /// A misspelt option is an error, not a silent default (`max_retry`
    /// meant zero retries).
    #[test]
    fn retry_and_limits_refuse_unknown_fields() {
        let e = serde_json::from_str::<RetryPolicy>(r#"{"max_retry": 3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `max_retry`"), "{e}");
        let e = serde_json::from_str::<JobLimits>(r#"{"time_limit": 3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `time_limit`"), "{e}");
        let r: RetryPolicy = serde_json::from_str(r#"{"max_retries": 3}"#).unwrap();
        assert_eq!(r.max_retries, 3);
    }

    #[test]
    fn cap_text_cuts_at_a_character_boundary_and_says_how_much() {
        assert_eq!(cap_text("short".into(), 100), "short");
        let long = "é".repeat(1000); // 2000 bytes
        let capped = cap_text(long, 101);
        assert!(capped.len() <= 101, "{}", capped.len());
        assert!(capped.starts_with('é'));
        let kept = capped.find(' ').unwrap();
        assert!(
            capped.ends_with(&format!(" [... {} more bytes]", 2000 - kept)),
            "{capped}"
        );
        // No room for the note: the start alone.
        assert!(cap_text("abcdef".into(), 3).len() <= 3);
        let f = JobFailure::new("fail", "x".repeat(MAX_MESSAGE_BYTES * 3));
        assert!(f.message.len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn rate_limits_read_back_as_written() {
        for (spec, shown) in [
            ("30/m", "30/m"),
            ("5/2s", "5/2s"),
            ("2/500ms", "2/500ms"),
            ("10/60s", "10/m"),
            ("1/d", "1/d"),
        ] {
            assert_eq!(RateLimit::parse("k", spec).unwrap().spec(), shown, "{spec}");
        }
    }

    #[test]
    fn rate_limits_parse() {
        let r = RateLimit::parse("q", "10/m").unwrap();
        assert_eq!((r.count, r.period_ms), (10, 60_000));
        let r = RateLimit::parse("q", "5/2s").unwrap();
        assert_eq!((r.count, r.period_ms), (5, 2000));
        assert!(RateLimit::parse("q", "0/m").is_err());
        assert!(RateLimit::parse("q", "5/2y").is_err());
        // A period past any window the brokers can keep: refused by name
        // (it wrapped to a negative window in the embedded broker, and
        // made Redis refuse the lease script's PEXPIRE).
        assert_eq!(
            RateLimit::parse("q", "1/366d").unwrap().period_ms,
            MAX_RATE_PERIOD_MS
        );
        for spec in ["1/367d", "1/999999999999d", "1/18446744073709551615ms"] {
            let err = RateLimit::parse("q", spec).unwrap_err().to_string();
            assert!(err.contains("at most 366d"), "{spec}: {err}");
        }
        assert!(RateLimit::parse("q", "abc").is_err());
    }

    #[test]
    fn queue_names() {
        assert!(validate_queue_name("mail").is_ok());
        assert!(matches!(
            validate_queue_name("my queue"),
            Err(JobError::InvalidQueue { .. })
        ));
        assert!(validate_queue_name("a{b}").is_err());
        assert!(validate_queue_name("").is_err());
        for dots in [".", ".."] {
            let err = validate_queue_name(dots).unwrap_err().to_string();
            assert!(err.contains("a URL"), "{dots}: {err}");
        }
        assert!(validate_queue_name("...").is_ok());
        assert!(validate_queue_name("v1.mail").is_ok());
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            backoff_base_ms: 1000,
            backoff_cap_ms: 5000,
            jitter: false,
            retry_on: vec![],
        };
        assert_eq!(p.backoff(1), Duration::from_millis(1000));
        assert_eq!(p.backoff(2), Duration::from_millis(2000));
        assert_eq!(p.backoff(5), Duration::from_millis(5000));
        let j = RetryPolicy { jitter: true, ..p };
        for _ in 0..100 {
            let d = j.backoff(3).as_millis();
            assert!((2000..=4000).contains(&d));
        }
    }

    #[test]
    fn state_is_first_field() {
        let j = Job {
            task: Some("t".into()),
            ..Job::new("q", "{}", Utc::now())
        };
        assert!(j.to_json().starts_with("{\"state\":\"PENDING\""));
    }
}
