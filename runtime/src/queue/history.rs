//! A queue's last hour, minute by minute: how many jobs were enqueued, were
//! retried and ended in each state, and how many waited and ran at the end
//! of each minute. Kept by the same code that changes job state, so the
//! counts are exact and cost no extra round trip:
//!
//! - on Redis, by the scripts (`lua/check.lua`, `hist_flush`), in one hash
//!   per queue, `runner:{q}:hist`, under the queue's hash tag: fields
//!   `<minute>:<STATE>` count the jobs that entered STATE in that minute
//!   (`PENDING` counts enqueued jobs), `<minute>:depth` and
//!   `<minute>:running` hold the waiting (ready + delayed) and leased jobs
//!   after the minute's last change, and `last` the minute of the queue's
//!   last change. The depth of that minute is the depth now: nothing has
//!   changed since. The first change of a later minute writes it, before
//!   the change: each call that changes the queue reads `last` (one
//!   command inside the script; a count is one more), and the first of a
//!   minute reads the depth and writes it (five). Minutes are Unix minutes
//!   of the server's clock;
//! - in the embedded broker, by the same rule in memory ([`Minutes`]),
//!   sampling every change.
//!
//! When a minute begins, minutes older than [`HISTORY_MINUTES`] are
//! dropped; the newest dropped depth is kept as `base` (what waited before
//! the window). A queue with no change for a whole hour has nothing to keep
//! (Redis lets the hash expire): its depth is what it is now. Memory per
//! queue is bounded (at most 61 minutes of 9 fields).
//!
//! Between two changes the depth does not move (only a change moves it), so
//! a minute without a sample carries the previous one forward; the current
//! minute shows the depth now.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::job::JobState;

/// Minutes of history kept and shown.
pub const HISTORY_MINUTES: i64 = 60;

const MINUTE_MS: i64 = 60_000;

/// What a minute counts, in [`Bucket::counts`] order; the Redis field
/// suffix of each is the state's name (`PENDING`: enqueued).
const COUNTED: [JobState; 6] = [
    JobState::Pending,
    JobState::Success,
    JobState::Failure,
    JobState::Retry,
    JobState::Revoked,
    JobState::Expired,
];

fn slot(state: JobState) -> Option<usize> {
    COUNTED.iter().position(|s| *s == state)
}

/// One minute of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Waiting and leased jobs after the minute's last change (`None`: no
    /// change that minute).
    pub depth: Option<(u64, u64)>,
    pub counts: [u64; COUNTED.len()],
}

/// A queue's minutes (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Minutes {
    pub buckets: BTreeMap<i64, Bucket>,
    /// Waiting and leased jobs before the oldest minute kept.
    pub base: Option<(u64, u64)>,
    /// The minute of the last change, when its depth is not written: it
    /// is the depth now (Redis's `last`).
    pub open: Option<i64>,
}

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS)
}

impl Minutes {
    /// Counts `n` jobs entering `state` at `now_ms` (STARTED is not
    /// counted: a lease is not a change an operator charts).
    pub fn count(&mut self, now_ms: i64, state: JobState, n: u64) {
        if let Some(i) = slot(state) {
            let b = self.buckets.entry(minute_of(now_ms)).or_default();
            b.counts[i] += n;
        }
    }

    /// Records the queue's depth after a change at `now_ms`; on a new
    /// minute, forgets what is older than the window (as the Lua does).
    pub fn sample(&mut self, now_ms: i64, waiting: u64, running: u64) {
        let m = minute_of(now_ms);
        let b = self.buckets.entry(m).or_default();
        let new = b.depth.is_none();
        b.depth = Some((waiting, running));
        if new {
            let keep = self.buckets.split_off(&(m - HISTORY_MINUTES));
            if let Some(d) = self.buckets.values().rev().find_map(|b| b.depth) {
                self.base = Some(d);
            }
            self.buckets = keep;
        }
    }

    /// Reads the fields of a Redis `hist` hash; fields it does not know
    /// are skipped.
    pub fn from_fields(fields: HashMap<String, String>) -> Self {
        let mut out = Minutes::default();
        let pair = |v: &str| {
            let (a, b) = v.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        for (k, v) in &fields {
            if k == "base" {
                out.base = pair(v);
                continue;
            }
            if k == "last" {
                out.open = v.parse().ok();
                continue;
            }
            let Some((m, what)) = k.split_once(':') else {
                continue;
            };
            let (Ok(m), Ok(n)) = (m.parse::<i64>(), v.parse::<u64>()) else {
                continue;
            };
            let b = out.buckets.entry(m).or_default();
            match what {
                "depth" => b.depth = Some((n, b.depth.map_or(0, |d| d.1))),
                "running" => b.depth = Some((b.depth.map_or(0, |d| d.0), n)),
                s => {
                    if let Some(i) = COUNTED.iter().position(|c| c.as_str() == s) {
                        b.counts[i] = n;
                    }
                }
            }
        }
        out
    }

    /// The last [`HISTORY_MINUTES`] minutes up to `now`, oldest first; the
    /// current minute ends with `current` (waiting, running) when given,
    /// and so does the minute of the last change ([`Minutes::open`]) and
    /// every minute after it.
    pub fn points(&self, now: DateTime<Utc>, current: Option<(u64, u64)>) -> Vec<HistoryPoint> {
        let last = minute_of(now.timestamp_millis());
        let first = last - HISTORY_MINUTES + 1;
        let open = self.open.filter(|_| current.is_some());
        // The depth before the window: the newest sample before it, else
        // `base`; with no sample at all nothing changed for an hour, so the
        // depth now held all along.
        let mut depth = self
            .buckets
            .range(..first)
            .rev()
            .find_map(|(_, b)| b.depth)
            .or(self.base);
        if depth.is_none() && self.buckets.values().all(|b| b.depth.is_none())
            || open.is_some_and(|o| o < first)
        {
            depth = current;
        }
        (first..=last)
            .map(|m| {
                let b = self.buckets.get(&m).copied().unwrap_or_default();
                depth = b.depth.or(depth);
                if m == last && current.is_some() || open == Some(m) {
                    depth = current;
                }
                let c = |s: JobState| slot(s).map_or(0, |i| b.counts[i]);
                HistoryPoint {
                    at: DateTime::from_timestamp(m * 60, 0).unwrap_or_default(),
                    waiting: depth.map(|d| d.0),
                    running: depth.map(|d| d.1),
                    enqueued: c(JobState::Pending),
                    succeeded: c(JobState::Success),
                    failed: c(JobState::Failure),
                    retried: c(JobState::Retry),
                    revoked: c(JobState::Revoked),
                    expired: c(JobState::Expired),
                }
            })
            .collect()
    }
}

/// One minute of a queue's (or of all queues') history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    /// The minute's start.
    pub at: DateTime<Utc>,
    /// Jobs waiting (ready or delayed) at the minute's end (now, for the
    /// current minute); `null` when not known (before the first change
    /// recorded).
    pub waiting: Option<u64>,
    /// Jobs leased by workers at the minute's end.
    pub running: Option<u64>,
    pub enqueued: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub retried: u64,
    pub revoked: u64,
    pub expired: u64,
}

/// Adds up the histories of several queues minute by minute (a depth is
/// known when one queue's is).
pub fn sum(histories: &[Vec<HistoryPoint>]) -> Vec<HistoryPoint> {
    let mut out: Vec<HistoryPoint> = Vec::new();
    for h in histories {
        if out.is_empty() {
            out = h.clone();
            continue;
        }
        for (o, p) in out.iter_mut().zip(h) {
            let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            };
            o.waiting = add(o.waiting, p.waiting);
            o.running = add(o.running, p.running);
            o.enqueued += p.enqueued;
            o.succeeded += p.succeeded;
            o.failed += p.failed;
            o.retried += p.retried;
            o.revoked += p.revoked;
            o.expired += p.expired;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_790_000_000_000 / MINUTE_MS * MINUTE_MS;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn counts_and_carries_depth_forward() {
        let mut h = Minutes::default();
        h.count(T0 + 10, JobState::Pending, 5);
        h.sample(T0 + 10, 5, 0);
        h.count(T0 + 2 * MINUTE_MS, JobState::Success, 2);
        h.sample(T0 + 2 * MINUTE_MS, 3, 1);
        let p = h.points(at(T0 + 4 * MINUTE_MS), None);
        assert_eq!(p.len(), HISTORY_MINUTES as usize);
        let n = p.len();
        // Oldest first; the last is the current minute.
        assert_eq!(p[n - 1].at, at(T0 + 4 * MINUTE_MS));
        assert_eq!(p[n - 5].enqueued, 5);
        assert_eq!(p[n - 5].waiting, Some(5));
        assert_eq!(p[n - 4].waiting, Some(5), "carried forward");
        assert_eq!(p[n - 3].succeeded, 2);
        assert_eq!((p[n - 1].waiting, p[n - 1].running), (Some(3), Some(1)));
        // Before the first sample nothing is known.
        assert_eq!(p[0].waiting, None);
        // The current minute shows the depth now when given.
        let p = h.points(at(T0 + 4 * MINUTE_MS), Some((7, 2)));
        assert_eq!((p[n - 1].waiting, p[n - 1].running), (Some(7), Some(2)));
        assert_eq!(p[n - 2].waiting, Some(3));
    }

    #[test]
    fn forgets_beyond_the_window_and_keeps_the_base() {
        let mut h = Minutes::default();
        h.sample(T0, 9, 0);
        h.count(T0, JobState::Failure, 1);
        h.sample(T0 + 100 * MINUTE_MS, 4, 0);
        assert_eq!(h.buckets.len(), 1, "{h:?}");
        assert_eq!(h.base, Some((9, 0)));
        let p = h.points(at(T0 + 100 * MINUTE_MS), None);
        assert_eq!(p[0].waiting, Some(9));
        assert!(p.iter().all(|p| p.failed == 0));
        // Nothing recorded at all: the depth now held all along.
        let p = Minutes::default().points(at(T0), Some((3, 0)));
        assert!(p.iter().all(|p| p.waiting == Some(3)));
    }

    #[test]
    fn reads_redis_fields() {
        let m = minute_of(T0);
        let fields: HashMap<String, String> = [
            (format!("{m}:depth"), "4".to_string()),
            (format!("{m}:running"), "2".to_string()),
            (format!("{m}:SUCCESS"), "10".to_string()),
            (format!("{m}:PENDING"), "12".to_string()),
            ("base".to_string(), "1:0".to_string()),
            ("junk".to_string(), "x".to_string()),
            (format!("{m}:depth-ish"), "x".to_string()),
        ]
        .into_iter()
        .collect();
        let h = Minutes::from_fields(fields);
        assert_eq!(h.base, Some((1, 0)));
        let b = h.buckets[&m];
        assert_eq!(b.depth, Some((4, 2)));
        assert_eq!(b.counts[slot(JobState::Success).unwrap()], 10);
        assert_eq!(b.counts[slot(JobState::Pending).unwrap()], 12);
    }

    #[test]
    fn the_minute_of_the_last_change_shows_the_depth_now() {
        let m = minute_of(T0);
        let fields: HashMap<String, String> = [
            (format!("{}:depth", m - 3), "4".to_string()),
            (format!("{}:running", m - 3), "2".to_string()),
            ("last".to_string(), (m - 1).to_string()),
        ]
        .into_iter()
        .collect();
        let h = Minutes::from_fields(fields);
        assert_eq!(h.open, Some(m - 1));
        let p = h.points(at(T0), Some((7, 1)));
        let n = p.len();
        let depth = |i: usize| (p[i].waiting, p[i].running);
        assert_eq!(depth(n - 4), (Some(4), Some(2)));
        assert_eq!(depth(n - 3), (Some(4), Some(2)), "carried forward");
        // From the last change on, the depth now: nothing changed since.
        assert_eq!(depth(n - 2), (Some(7), Some(1)));
        assert_eq!(depth(n - 1), (Some(7), Some(1)));
        // Without the depth now, what was written is carried forward.
        let p = h.points(at(T0), None);
        assert_eq!((p[n - 1].waiting, p[n - 1].running), (Some(4), Some(2)));
        // A last change before the window: the depth now all along.
        let h = Minutes {
            base: Some((9, 0)),
            open: Some(m - 200),
            ..Minutes::default()
        };
        let p = h.points(at(T0), Some((5, 0)));
        assert!(p.iter().all(|p| p.waiting == Some(5)), "{p:?}");
    }

    #[test]
    fn sums_queues() {
        let mut a = Minutes::default();
        a.count(T0, JobState::Success, 2);
        a.sample(T0, 1, 1);
        let b = Minutes::default();
        let s = sum(&[a.points(at(T0), None), b.points(at(T0), None)]);
        let last = s.last().unwrap();
        assert_eq!(
            (last.succeeded, last.waiting, last.running),
            (2, Some(1), Some(1))
        );
    }
}
