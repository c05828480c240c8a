//! A beat (one recurring job definition), its validation, and the times it
//! comes due.
//!
//! Validation never panics and names the field at fault:
//! `cron: 61 is out of range for minutes (0-59)`,
//! `timezone: unknown time zone "Mars/Olympus"`, `name: must not be empty`.
//! Whether the task exists is checked by the caller that holds the registry
//! ([`super::Scheduler::put`]).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::queue::job::MAX_DELAY;
use crate::queue::job::validate_queue_name;
use crate::queue::{JobError, JobLimits, RetryPolicy};

/// What to do with due times that passed while no scheduler was watching
/// (every replica down, Redis unreachable, the process suspended).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MissedPolicy {
    /// Drop them; the next fire is the next regular due time.
    #[default]
    Skip,
    /// One job for the whole missed period (for its latest due time), then
    /// the regular schedule. Never one per missed tick.
    CatchUpOnce,
}

/// One recurring job: `[[beats]]` in `runner.toml`, or JSON through the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Beat {
    /// 1 to 100 of `A-Z a-z 0-9 _ - . :`, starting with a letter or digit.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")]
    pub name: String,
    /// The task name the job runs (its binding gives the defaults).
    #[serde(default)]
    #[schema(value_type = crate::names::TaskName, required = true)]
    pub task: String,
    /// The job's input (any JSON value).
    #[serde(default = "empty_object")]
    pub input: serde_json::Value,
    /// Overrides the task binding's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(?!\\.{1,2}$)[A-Za-z0-9_.:-]{1,100}$")]
    pub queue: Option<String>,
    /// A crontab line: 5 fields, or 6 with seconds first, or an alias
    /// (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed interval (`30s`, `5m`, `1h`, `1h30m`), counted from the Unix
    /// epoch so that every replica agrees on the due times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// An IANA time zone (`Asia/Tokyo`); the cron fields are wall-clock
    /// times in it.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub missed: MissedPolicy,
    /// A disabled beat keeps its definition and fires nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::json_object::optional_object"
    )]
    pub retry: Option<RetryPolicy>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::json_object::optional_object"
    )]
    pub limits: Option<JobLimits>,
    /// The priority of its jobs (0 to 9, higher first); the task's when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 9)]
    pub priority: Option<u64>,
    /// A job not started this many seconds after it is enqueued expires
    /// (a catch-up fire's job, or one enqueued again by another replica,
    /// counts from that enqueue, not from its due time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 3_155_760_000_u64)]
    pub expires_in_secs: Option<f64>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

fn utc() -> String {
    "UTC".to_string()
}

fn yes() -> bool {
    true
}

impl Beat {
    /// A beat with defaults for everything but its name, task and schedule.
    pub fn cron(name: impl Into<String>, task: impl Into<String>, cron: &str) -> Self {
        Beat {
            cron: Some(cron.to_string()),
            ..Beat::bare(name.into(), task.into())
        }
    }

    /// A beat firing every `every` (`30s`, `5m`, `1h`).
    pub fn every(name: impl Into<String>, task: impl Into<String>, every: &str) -> Self {
        Beat {
            every: Some(every.to_string()),
            ..Beat::bare(name.into(), task.into())
        }
    }

    fn bare(name: String, task: String) -> Self {
        Beat {
            name,
            task,
            input: empty_object(),
            queue: None,
            cron: None,
            every: None,
            timezone: utc(),
            missed: MissedPolicy::Skip,
            enabled: true,
            retry: None,
            limits: None,
            priority: None,
            expires_in_secs: None,
        }
    }

    /// Checks every field (not whether the task exists) and reports every
    /// problem found, each naming its field.
    pub fn validate(&self) -> Result<(), BeatError> {
        self.schedule().map(|_| ())
    }

    /// Validates the beat and compiles its schedule.
    pub fn schedule(&self) -> Result<Schedule, BeatError> {
        let mut problems = Vec::new();
        if let Err(e) = validate_beat_name(&self.name) {
            problems.push(FieldError::new("name", e.to_string()));
        }
        if self.task.trim().is_empty() {
            problems.push(FieldError::new("task", "must not be empty"));
        }
        if let Some(q) = &self.queue
            && let Err(e) = validate_queue_name(q)
        {
            problems.push(FieldError::new("queue", e.to_string()));
        }
        if let Some(s) = self.expires_in_secs
            && !(s.is_finite() && s > 0.0 && s <= MAX_DELAY.as_secs_f64())
        {
            problems.push(FieldError::new(
                "expires_in_secs",
                format!(
                    "must be a positive number of seconds, at most {}",
                    MAX_DELAY.as_secs()
                ),
            ));
        }
        // The maxima every job has: a beat's fire is a job.
        let numbers = [
            ("retry", self.retry.as_ref().map(RetryPolicy::check)),
            ("limits", self.limits.as_ref().map(JobLimits::check)),
            (
                "priority",
                self.priority
                    .map(|p| crate::queue::job::check_priority("priority", p).map(|_| ())),
            ),
        ];
        for (of, e) in numbers
            .into_iter()
            .filter_map(|(of, r)| Some((of, r?.err()?)))
        {
            // The error names the field within the part (`limits.time_limit_ms`).
            let field = match &e {
                JobError::AboveMaximum { field, .. } | JobError::BelowMinimum { field, .. } => {
                    *field
                }
                _ => of,
            };
            problems.push(FieldError::new(field, e.to_string()));
        }
        let tz = match Tz::from_str(self.timezone.trim()) {
            Ok(tz) => Some(tz),
            Err(_) => {
                problems.push(FieldError::new(
                    "timezone",
                    format!(
                        "unknown time zone {:?} (use an IANA name such as \"UTC\" or \"Asia/Tokyo\")",
                        self.timezone
                    ),
                ));
                None
            }
        };
        let rule = match (&self.cron, &self.every) {
            (Some(c), None) => match parse_cron(c) {
                Ok(cron) => Some(Rule::Cron(Box::new(CronRule {
                    patterns: fixed_times(c, &cron).unwrap_or_else(|| vec![cron]),
                }))),
                Err(e) => {
                    problems.push(FieldError::new("cron", e.to_string()));
                    None
                }
            },
            (None, Some(e)) => match parse_every(e) {
                Ok(secs) => Some(Rule::Every(secs)),
                Err(e) => {
                    problems.push(FieldError::new("every", e.to_string()));
                    None
                }
            },
            (Some(_), Some(_)) => {
                problems.push(FieldError::new(
                    "cron",
                    "give either `cron` or `every`, not both",
                ));
                None
            }
            (None, None) => {
                problems.push(FieldError::new(
                    "cron",
                    "a beat needs a schedule: `cron = \"0 9 * * *\"` or `every = \"5m\"`",
                ));
                None
            }
        };
        match (rule, tz) {
            (Some(rule), Some(tz)) if problems.is_empty() => Ok(Schedule { rule, tz }),
            _ => Err(BeatError::Invalid(problems)),
        }
    }

    /// The fields that decide when the beat fires. A change to any of them
    /// restarts the beat's schedule from the moment of the change.
    pub(crate) fn same_timing(&self, other: &Beat) -> bool {
        self.cron == other.cron
            && self.every == other.every
            && self.timezone == other.timezone
            && self.enabled == other.enabled
            && self.missed == other.missed
    }
}

/// Beat names appear in Redis keys, URLs and metric labels: the rules of
/// every name ([`crate::names::NameError`]).
pub fn validate_beat_name(name: &str) -> Result<(), crate::names::NameError> {
    crate::names::check_name(name)
}

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a beat was refused or an operation on beats failed.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    /// Bad input (an API answers 400).
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
    /// The task name is not bound (an API answers 400: the beat is the bad
    /// input, not the URL).
    #[error("task: unknown task {0:?}; bind it before scheduling it")]
    UnknownTask(String),
    /// No beat of that name (404).
    #[error("no beat named {0:?}")]
    NotFound(String),
    /// The beat comes from `runner.toml` only; the file is its source.
    #[error(
        "beat {0:?} is defined in runner.toml: remove it there, or disable it (`enabled = false`)"
    )]
    FromConfig(String),
    /// The beat kept changing while it was being switched on or off
    /// (409: try again).
    #[error("beat {0:?} changed while it was being switched; try again")]
    Conflict(String),
    /// The store or the registry could not be reached (503).
    #[error("beat store: {0}")]
    Store(#[from] super::store::StoreError),
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The job could not be enqueued (`fire_now`).
    #[error("enqueue: {0}")]
    Enqueue(#[from] crate::producer::EnqueueError),
}

impl BeatError {
    /// The caller sent something wrong (as opposed to a missing beat or an
    /// unreachable store).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            BeatError::Invalid(_) | BeatError::UnknownTask(_) | BeatError::FromConfig(_)
        ) || matches!(self, BeatError::Enqueue(e) if !matches!(e, crate::producer::EnqueueError::Broker(_) | crate::producer::EnqueueError::Registry(_)))
    }
}

fn join(v: &[FieldError]) -> String {
    v.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Clone, Debug)]
enum Rule {
    Cron(Box<CronRule>),
    /// Seconds; due times are the multiples of it since the Unix epoch.
    Every(i64),
}

#[derive(Clone, Debug)]
struct CronRule {
    /// The beat's pattern, or that pattern split into one per fixed time
    /// of day (see [`fixed_times`]): a time matches if one of them does.
    patterns: Vec<Cron>,
}

impl CronRule {
    /// The first match after `start` (exclusive).
    fn next(&self, start: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        let each = self.patterns.iter();
        each.filter_map(|c| c.find_next_occurrence(start, false).ok())
            .min()
    }

    /// The last match at or before `start`.
    fn previous(&self, start: &DateTime<Tz>) -> Option<DateTime<Tz>> {
        let each = self.patterns.iter();
        each.filter_map(|c| c.find_previous_occurrence(start, true).ok())
            .max()
    }
}

/// The most times of day a pattern is split into (see [`fixed_times`]).
const MAX_FIXED_TIMES: usize = 256;

/// A pattern of several fixed times of day (`0 9,17 * * *`, `0 0 9-17 * *
/// *`: no wildcard or step in its seconds, minutes or hours) as one
/// pattern per time of day. croner reads DST changes the fixed-time way
/// (a repeated time once, a time in a gap just after it) only for a
/// pattern of one time of day, and reads a list or a range with the
/// rhythm of a wildcard; split, each time of day is fixed. `None` when
/// there is nothing to split: one time of day, a wildcard or step, an
/// alias, or more than [`MAX_FIXED_TIMES`] times (those keep croner's
/// reading).
fn fixed_times(expr: &str, cron: &Cron) -> Option<Vec<Cron>> {
    let p = &cron.pattern;
    let fields = [&p.seconds, &p.minutes, &p.hours];
    if expr.trim_start().starts_with('@') || fields.iter().any(|f| f.from_wildcard || f.step != 1) {
        return None;
    }
    let [secs, mins, hours] = fields.map(|f| f.values());
    let n = secs.len() * mins.len() * hours.len();
    if n <= 1 || n > MAX_FIXED_TIMES {
        return None;
    }
    let words: Vec<&str> = expr.split_whitespace().collect();
    // Day of month, month and day of week: the last three fields.
    let days = words.get(words.len().saturating_sub(3)..)?.join(" ");
    let mut out = Vec::with_capacity(n);
    for h in &hours {
        for m in &mins {
            for s in &secs {
                // An error cannot happen (the pattern parsed whole);
                // croner's reading is kept if one does.
                out.push(parser().parse(&format!("{s} {m} {h} {days}")).ok()?);
            }
        }
    }
    Some(out)
}

/// A compiled schedule: the rule and the zone it is read in.
#[derive(Clone, Debug)]
pub struct Schedule {
    rule: Rule,
    tz: Tz,
}

impl Schedule {
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first due time strictly after `t`.
    ///
    /// Cron times are wall-clock times in the beat's zone, resolved the way
    /// cron does across DST changes (croner's rules): a time that does not
    /// exist (spring forward) fires at the first instant after the gap, for
    /// a fixed time of day (`30 2 * * *` fires at 03:00); patterns with a
    /// wildcard or step in the seconds, minutes or hours field keep their
    /// rhythm and simply have no tick in the gap. A time that occurs twice
    /// (fall back) fires once, at its first occurrence, for a fixed time of
    /// day; a wildcard/step pattern fires on both real instants, which are
    /// an hour apart (an hourly job stays hourly). A list or range of
    /// times (`0 1,13 * * *`) is that many fixed times of day.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let secs = t.timestamp();
        match &self.rule {
            Rule::Every(n) => Utc.timestamp_opt((secs.div_euclid(*n) + 1) * n, 0).single(),
            Rule::Cron(cron) => {
                // Whole seconds: `t` itself is never returned, and a
                // fraction of a second cannot leak into a due time.
                let start = Utc.timestamp_opt(secs, 0).single()?.with_timezone(&self.tz);
                cron.next(&start).map(|d| d.with_timezone(&Utc))
            }
        }
    }

    /// The latest due time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let secs = t.timestamp();
        match &self.rule {
            Rule::Every(n) => Utc.timestamp_opt(secs.div_euclid(*n) * n, 0).single(),
            Rule::Cron(cron) => {
                let start = Utc.timestamp_opt(secs, 0).single()?.with_timezone(&self.tz);
                cron.previous(&start).map(|d| d.with_timezone(&Utc))
            }
        }
    }

    /// `t` in the beat's zone, RFC 3339 with its offset.
    pub fn local(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz).to_rfc3339()
    }
}

const FIELDS_5: [&str; 5] = ["minutes", "hours", "day of month", "month", "day of week"];
const FIELDS_6: [&str; 6] = [
    "seconds",
    "minutes",
    "hours",
    "day of month",
    "month",
    "day of week",
];

fn bounds(field: &str) -> (u32, u32, &'static str) {
    match field {
        "seconds" | "minutes" => (0, 59, "0-59"),
        "hours" => (0, 23, "0-23"),
        "day of month" => (1, 31, "1-31"),
        "month" => (1, 12, "1-12 or JAN-DEC"),
        _ => (0, 7, "0-7 or SUN-SAT; 0 and 7 are Sunday"),
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Month and day names as numbers, upper case otherwise.
fn replace_names(field: &str, item: &str) -> String {
    let mut s = item.to_ascii_uppercase();
    let (names, first): (&[&str], usize) = match field {
        "month" => (&MONTHS, 1),
        "day of week" => (&DAYS, 0),
        _ => return s,
    };
    for (i, n) in names.iter().enumerate() {
        s = s.replace(n, &(i + first).to_string());
    }
    s
}

/// A number of one field.
fn field_value(field: &str, v: &str) -> Result<u32, String> {
    let (lo, hi, range) = bounds(field);
    let n: u32 = v
        .parse()
        .map_err(|_| format!("{v:?} is not a valid value for {field} ({range})"))?;
    if n < lo || n > hi {
        return Err(format!("{n} is out of range for {field} ({range})"));
    }
    Ok(n)
}

/// Checks each field's numbers and names first, so that the message names
/// the field; croner then has the final word on the whole line (and on its
/// extensions: `L`, `W`, `#`, `+`).
fn check_fields(expr: &str) -> Result<(), String> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let names: &[&str] = match parts.len() {
        5 => &FIELDS_5,
        6 => &FIELDS_6,
        n => {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first), found {n} in {expr:?}"
            ));
        }
    };
    for (part, field) in parts.iter().zip(names) {
        for item in part.split(',') {
            if item.is_empty() {
                return Err(format!("empty list item in {field} field {part:?}"));
            }
            let item = replace_names(field, item);
            let item = item.as_str();
            // Extensions croner understands (`L`, `W`, `#`, `+` in the day
            // fields); it checks those items itself.
            if matches!(*field, "day of month" | "day of week")
                && item.contains(['L', 'W', '#', '+'])
            {
                continue;
            }
            let (base, step) = match item.split_once('/') {
                Some((b, s)) => (b, Some(s)),
                None => (item, None),
            };
            if let Some(s) = step {
                let (_, hi, _) = bounds(field);
                match s.parse::<u32>() {
                    Ok(n) if n >= 1 && n <= hi.max(1) => {}
                    Ok(n) => {
                        return Err(format!("step {n} is out of range for {field} in {item:?}"));
                    }
                    Err(_) => return Err(format!("step {s:?} in {field} is not a number")),
                }
            }
            if base == "*" || base == "?" {
                continue;
            }
            match base.split_once('-') {
                Some((a, b)) => {
                    let a = field_value(field, a)?;
                    let b = field_value(field, b)?;
                    if a > b && !(*field == "day of week" && b == 0) {
                        return Err(format!("range {base:?} in {field} runs backwards"));
                    }
                }
                None => {
                    field_value(field, base)?;
                }
            }
        }
    }
    Ok(())
}

const ALIASES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// Why a `cron` or `every` rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("must not be empty")]
    EmptyCron,
    #[error("unknown alias {0:?} (use @hourly, @daily, @weekly, @monthly, @yearly or @annually)")]
    UnknownAlias(String),
    /// A field of a crontab line; the message names the field.
    #[error("{0}")]
    Field(String),
    #[error("{expr:?} is not a valid cron expression: {reason}")]
    Invalid { expr: String, reason: String },
    #[error("{0:?} never comes due")]
    NeverDue(String),
    #[error("must not be empty; e.g. \"30s\", \"5m\", \"1h\"")]
    EmptyEvery,
    #[error("{text:?} is not an interval ({reason}); e.g. \"30s\", \"5m\", \"1h\"")]
    NotInterval { text: String, reason: String },
    #[error("{0:?} is not a whole number of seconds")]
    Fractional(String),
    #[error("must be at least 1s")]
    Zero,
    #[error("{0:?} is longer than a year; use `cron` instead")]
    TooLong(String),
}

/// Parses a crontab line: 5 fields, 6 with seconds first, or an alias.
pub fn parse_cron(expr: &str) -> Result<Cron, RuleError> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Err(RuleError::EmptyCron);
    }
    if expr.starts_with('@') {
        if !ALIASES.iter().any(|a| a.eq_ignore_ascii_case(expr)) {
            return Err(RuleError::UnknownAlias(expr.to_string()));
        }
    } else {
        check_fields(expr).map_err(RuleError::Field)?;
    }
    let cron = parser().parse(expr).map_err(|e| RuleError::Invalid {
        expr: expr.to_string(),
        reason: e.to_string(),
    })?;
    // A pattern that can never match (`0 0 30 2 *`) is refused now rather
    // than found out at fire time.
    let probe = Utc::now();
    if cron.find_next_occurrence(&probe, false).is_err() {
        return Err(RuleError::NeverDue(expr.to_string()));
    }
    Ok(cron)
}

/// Crontab lines: 5 fields, or 6 with seconds first.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Parses `30s`, `5m`, `1h`, `1h30m`, `2d`: whole seconds, at least one.
pub fn parse_every(s: &str) -> Result<i64, RuleError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(RuleError::EmptyEvery);
    }
    let d = humantime::parse_duration(t).map_err(|e| RuleError::NotInterval {
        text: t.to_string(),
        reason: e.to_string(),
    })?;
    if d.subsec_nanos() != 0 {
        return Err(RuleError::Fractional(t.to_string()));
    }
    let secs = d.as_secs();
    if secs == 0 {
        return Err(RuleError::Zero);
    }
    if secs > 366 * 24 * 3600 {
        return Err(RuleError::TooLong(t.to_string()));
    }
    Ok(secs as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: &Beat) -> String {
        b.validate().unwrap_err().to_string()
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(
            err(&Beat::cron("a", "t", "61 * * * *")),
            "cron: 61 is out of range for minutes (0-59)"
        );
        assert!(
            err(&Beat::cron("a", "t", "0 9 * * 8"))
                .starts_with("cron: 8 is out of range for day of week")
        );
        let mut b = Beat::cron("a", "t", "0 9 * * *");
        b.timezone = "Mars/Olympus".into();
        assert!(err(&b).starts_with("timezone: unknown time zone \"Mars/Olympus\""));
        assert_eq!(
            err(&Beat::cron("", "t", "0 9 * * *")),
            "name: must not be empty"
        );
        assert!(err(&Beat::every("a", "t", "0s")).starts_with("every: "));
        assert!(err(&Beat::cron("a", "t", "@fortnightly")).starts_with("cron: unknown alias"));
    }

    /// A beat's fire is a job: its numbers have the maxima of a job's
    /// (before, a beat with 4e9 retries at no backoff was accepted).
    #[test]
    fn numbers_above_a_jobs_maxima_are_refused_by_name() {
        let mut b = Beat::cron("a", "t", "0 9 * * *");
        b.retry = Some(RetryPolicy {
            max_retries: 4_000_000_000,
            ..RetryPolicy::default()
        });
        b.limits = Some(JobLimits {
            fuel: Some(u64::MAX),
            ..JobLimits::default()
        });
        b.expires_in_secs = Some(1e300);
        b.priority = Some(10);
        let e = err(&b);
        assert!(
            e.contains("priority: priority is 10, above its maximum of 9"),
            "{e}"
        );
        assert!(
            e.contains("retry.max_retries: retry.max_retries is 4000000000"),
            "{e}"
        );
        assert!(e.contains("limits.fuel: "), "{e}");
        assert!(
            e.contains("expires_in_secs: must be a positive number"),
            "{e}"
        );
    }

    #[test]
    fn accepts_the_usual_forms() {
        for c in [
            "0 9 * * *",
            "*/30 * * * * *",
            "0 9 * * mon-fri",
            "0 0 1 jan,jul *",
            "0 0 * * 7",
            "@daily",
            "@hourly",
            "0 0 L * *",
            "0 12 * * 5#2",
            "15-45/10 * * * *",
        ] {
            Beat::cron("a", "t", c)
                .validate()
                .unwrap_or_else(|e| panic!("{c}: {e}"));
        }
    }
}
