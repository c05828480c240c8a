//! # `builtin:cleanup`: delete old files, watch free disk
//!
//! Deletes the files under granted roots whose path matches a glob and that
//! were last modified more than N days ago (old logs, old reports), reports
//! what it freed, then checks the free space of each root's filesystem and
//! posts a webhook alert when it is below a threshold. Meant for a nightly
//! beat on the `maintenance` queue.
//!
//! Needs the `files` grant, read-write, for every root named in `rules`
//! (e.g. `files = { logs = "read-write", reports = "read-write" }`), and the
//! `http` grant for the webhook's host when `webhook` is given. Symlinks are
//! never followed or deleted, and nothing outside a root is reachable (the
//! host enforces both).
//!
//! ## Input
//!
//! ```json
//! {
//!   "rules": [
//!     { "root": "logs", "glob": "**/*.log", "older_than_days": 14 },
//!     { "root": "reports", "glob": "daily/*.pdf", "older_than_days": 90 }
//!   ],
//!   "dry_run": false,
//!   "alert_below": "10%",
//!   "webhook": "https://example.webhook.office.com/webhookb2/...",
//!   "webhook_kind": "teams"
//! }
//! ```
//!
//! | field | type | |
//! |---|---|---|
//! | `rules` | list | at least one; each `root` (a files root), `glob` (relative to the root; `*` stays within a directory, `**` crosses directories) and `older_than_days` (1 or more) |
//! | `dry_run` | bool | default `false`: when `true`, nothing is deleted and no alert is posted; the output says what would be deleted and which roots are low |
//! | `alert_below` | number or string | optional: free space under which a root counts as low: bytes (`5368709120`, `"5GiB"`, `"500MB"`) or a share of the filesystem (`"10%"`) |
//! | `webhook` | string | optional: where to post the alert (needs `alert_below`) |
//! | `webhook_kind` | `"json"`, `"slack"` or `"teams"` | default `"json"` |
//!
//! A `json` alert is `{"alert": "low_disk", "threshold": "10%", "roots":
//! [{"root", "free_bytes", "total_bytes", "free_percent"}]}`; Slack and Teams
//! get a message in Japanese (「ディスク空き容量の警告」) with one line per low
//! root.
//!
//! ## Output
//!
//! ```json
//! {
//!   "dry_run": false,
//!   "files_deleted": 3,
//!   "bytes_freed": 52428800,
//!   "rules": [
//!     { "root": "logs", "glob": "**/*.log", "older_than_days": 14,
//!       "files": 3, "bytes_freed": 52428800,
//!       "deleted": ["app/2026-11-01.log", "..."], "deleted_truncated": false }
//!   ],
//!   "disk": [
//!     { "root": "logs", "total_bytes": 107374182400, "free_bytes": 5368709120,
//!       "free_percent": 5.0, "low": true }
//!   ],
//!   "alert_sent": true
//! }
//! ```
//!
//! `deleted` lists at most 100 paths per rule (`deleted_truncated` says when
//! there were more; `files` is always the full count). A webhook that answers
//! 5xx or 429 makes the job a retry: running it again is harmless, since the
//! files already deleted are gone and the disk is checked afresh.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use runner_sdk::http::{self, SlackMessage, TeamsMessage};
use runner_sdk::{Context, TaskError, files, task};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const MAX_LISTED: usize = 100;
const DAY: u64 = 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    rules: Vec<Rule>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    alert_below: Option<Value>,
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    webhook_kind: WebhookKind,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct Rule {
    root: String,
    glob: String,
    older_than_days: u32,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WebhookKind {
    #[default]
    Json,
    Slack,
    Teams,
}

/// Free space under which a root is low.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Threshold {
    Bytes(u64),
    Percent(f64),
}

impl Threshold {
    fn parse(value: &Value) -> Result<Threshold, String> {
        match value {
            Value::Number(n) => n
                .as_u64()
                .map(Threshold::Bytes)
                .ok_or_else(|| format!("{n} is not a whole number of bytes")),
            Value::String(s) => Threshold::parse_str(s),
            other => Err(format!(
                "expected bytes (a number or \"5GiB\") or a percentage (\"10%\"), got {other}"
            )),
        }
    }

    fn parse_str(text: &str) -> Result<Threshold, String> {
        let text = text.trim();
        if let Some(number) = text.strip_suffix('%') {
            let percent: f64 = number
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a percentage like \"10%\""))?;
            if !(percent > 0.0 && percent <= 100.0) {
                return Err(format!("{text:?} must be above 0% and at most 100%"));
            }
            return Ok(Threshold::Percent(percent));
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size like \"5GiB\" or a percentage"))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {text:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB or %)"
                ));
            }
        };
        Ok(Threshold::Bytes((number * factor as f64) as u64))
    }

    fn is_low(&self, free: u64, total: u64) -> bool {
        match *self {
            Threshold::Bytes(bytes) => free < bytes,
            Threshold::Percent(percent) => percent_of(free, total) < percent,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Bytes(b) => f.write_str(&human_bytes(*b)),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Serialize)]
struct RuleReport {
    root: String,
    glob: String,
    older_than_days: u32,
    files: usize,
    bytes_freed: u64,
    deleted: Vec<String>,
    deleted_truncated: bool,
}

#[derive(Serialize, Clone)]
struct DiskReport {
    root: String,
    total_bytes: u64,
    free_bytes: u64,
    free_percent: f64,
    low: bool,
}

#[derive(Serialize)]
struct Output {
    dry_run: bool,
    files_deleted: usize,
    bytes_freed: u64,
    rules: Vec<RuleReport>,
    disk: Vec<DiskReport>,
    alert_sent: bool,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let threshold = check(&input)?;

    let mut reports = Vec::with_capacity(input.rules.len());
    for (i, rule) in input.rules.iter().enumerate() {
        let older_than = Duration::from_secs(u64::from(rule.older_than_days) * DAY);
        let report = files::cleanup(&rule.root, &rule.glob, older_than, input.dry_run)
            .map_err(|e| TaskError::from(e).context(format!("rules[{i}] ({})", rule.root)))?;
        let files = report.deleted.len();
        ctx.info(format!(
            "{}:{} older than {} days: {} {files} files, {}",
            rule.root,
            rule.glob,
            rule.older_than_days,
            if input.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            human_bytes(report.bytes_freed)
        ));
        ctx.progress(i as u64 + 1, input.rules.len() as u64);
        reports.push(RuleReport {
            root: rule.root.clone(),
            glob: rule.glob.clone(),
            older_than_days: rule.older_than_days,
            files,
            bytes_freed: report.bytes_freed,
            deleted_truncated: files > MAX_LISTED,
            deleted: report
                .deleted
                .into_iter()
                .take(MAX_LISTED)
                .map(|e| e.path)
                .collect(),
        });
    }

    // Each root once, in name order, after the deletions.
    let roots: BTreeSet<&str> = input.rules.iter().map(|r| r.root.as_str()).collect();
    let mut disk = Vec::with_capacity(roots.len());
    for root in roots {
        let usage = files::disk_usage(root).map_err(|e| TaskError::from(e).context(root))?;
        let low = threshold.is_some_and(|t| t.is_low(usage.free_bytes, usage.total_bytes));
        if low {
            ctx.warn(format!(
                "{root}: only {} free of {}",
                human_bytes(usage.free_bytes),
                human_bytes(usage.total_bytes)
            ));
        }
        disk.push(DiskReport {
            root: root.to_string(),
            total_bytes: usage.total_bytes,
            free_bytes: usage.free_bytes,
            free_percent: (percent_of(usage.free_bytes, usage.total_bytes) * 10.0).round() / 10.0,
            low,
        });
    }

    let low: Vec<DiskReport> = disk.iter().filter(|d| d.low).cloned().collect();
    let mut alert_sent = false;
    if let (Some(url), Some(threshold), false, false) = (
        input.webhook.as_deref(),
        threshold,
        low.is_empty(),
        input.dry_run,
    ) {
        post_alert(url, input.webhook_kind, threshold, &low)
            .map_err(|e| TaskError::from(e).context("posting the low-disk alert"))?;
        ctx.info(format!("low-disk alert posted for {} roots", low.len()));
        alert_sent = true;
    }

    Ok(Output {
        dry_run: input.dry_run,
        files_deleted: reports.iter().map(|r| r.files).sum(),
        bytes_freed: reports.iter().map(|r| r.bytes_freed).sum(),
        rules: reports,
        disk,
        alert_sent,
    })
}

/// Refuses input that could never do what was meant, before touching a file.
fn check(input: &Input) -> Result<Option<Threshold>, TaskError> {
    if input.rules.is_empty() {
        return Err(TaskError::fail("`rules` is empty: nothing to clean up"));
    }
    for (i, rule) in input.rules.iter().enumerate() {
        if rule.root.trim().is_empty() {
            return Err(TaskError::fail(format!("rules[{i}].root is empty")));
        }
        if rule.glob.trim().is_empty() {
            return Err(TaskError::fail(format!("rules[{i}].glob is empty")));
        }
        if rule.older_than_days == 0 {
            return Err(TaskError::fail(format!(
                "rules[{i}].older_than_days must be at least 1 (0 would delete every matching file)"
            )));
        }
    }
    let threshold = input
        .alert_below
        .as_ref()
        .map(Threshold::parse)
        .transpose()
        .map_err(|e| TaskError::fail(format!("alert_below: {e}")))?;
    if input.webhook.is_some() && threshold.is_none() {
        return Err(TaskError::fail(
            "`webhook` is given without `alert_below`: the alert would never be sent",
        ));
    }
    Ok(threshold)
}

fn post_alert(
    url: &str,
    kind: WebhookKind,
    threshold: Threshold,
    low: &[DiskReport],
) -> Result<(), runner_sdk::HostError> {
    let title = "ディスク空き容量の警告";
    let summary = format!(
        "{} 件のルートで空き容量がしきい値 {threshold} を下回っています。",
        low.len()
    );
    let lines: Vec<(String, String)> = low
        .iter()
        .map(|d| {
            (
                d.root.clone(),
                format!(
                    "空き {} / {} ({:.1}%)",
                    human_bytes(d.free_bytes),
                    human_bytes(d.total_bytes),
                    d.free_percent
                ),
            )
        })
        .collect();
    match kind {
        WebhookKind::Slack => {
            let message = lines.into_iter().fold(
                SlackMessage::new(format!("*{title}*\n{summary}")),
                |m, (root, line)| m.field(root, line),
            );
            message.send(url)?;
        }
        WebhookKind::Teams => {
            let message = lines.into_iter().fold(
                TeamsMessage::new(summary).title(title),
                |m, (root, line)| m.fact(root, line),
            );
            message.send(url)?;
        }
        WebhookKind::Json => {
            let roots: Vec<Value> = low
                .iter()
                .map(|d| {
                    json!({
                        "root": d.root,
                        "free_bytes": d.free_bytes,
                        "total_bytes": d.total_bytes,
                        "free_percent": d.free_percent,
                    })
                })
                .collect();
            let body = json!({
                "alert": "low_disk",
                "threshold": threshold.to_string(),
                "message": summary,
                "roots": roots,
            });
            http::post_json(url, &body)?.error_for_status()?;
        }
    }
    Ok(())
}

fn percent_of(part: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    part as f64 * 100.0 / total as f64
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
