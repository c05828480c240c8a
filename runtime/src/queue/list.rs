//! Finding jobs: the query of `GET /v1/jobs` and its pages.
//!
//! Each broker keeps, per queue, an index of its jobs' ids written by the
//! same calls that store and end them (the Redis scripts, the embedded
//! broker's state). Ids are UUIDv7, so they sort by creation time: the
//! index is one sorted set of ids, newest last, and a time range is a range
//! of ids. Jobs that ended FAILURE, REVOKED or EXPIRED also have an index
//! of their own per state (they are few among many successes, and what an
//! operator looks for). An entry leaves the index when its record expires,
//! so the index is bounded by the result TTLs like the records.
//!
//! A page is read newest first from a cursor (the last id it looked at).
//! Filters the index cannot answer (task, parent, beat, a live state or
//! SUCCESS) are applied to the records read: a page looks at no more than
//! [`LIST_SCAN`] entries, so it may hold fewer than `limit` jobs and still
//! have a next cursor. Its cost is bounded whatever the number of stored
//! jobs.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::job::{Job, JobId, JobState};

/// The most jobs a page holds.
pub const LIST_MAX: usize = 500;
/// The most index entries one page looks at when filters need the records.
pub const LIST_SCAN: usize = 1000;

/// Which jobs to list, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobQuery {
    /// These queues (one, or the partitions of one); every known queue
    /// when empty.
    pub queues: Vec<String>,
    pub task: Option<String>,
    pub state: Option<JobState>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Children of this job.
    pub parent: Option<JobId>,
    /// Enqueued by this beat.
    pub beat: Option<String>,
    /// At most this many (1..=[`LIST_MAX`]).
    pub limit: usize,
    /// Continue after this id (the `next` of the page before).
    pub cursor: Option<JobId>,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Where the next page starts; `None` when nothing older is left.
    pub next: Option<JobId>,
}

impl JobQuery {
    /// The final states with an index of their own: a filter on one of
    /// them reads only that index.
    pub fn indexed_state(&self) -> Option<JobState> {
        self.state
            .filter(|s| matches!(s, JobState::Failure | JobState::Revoked | JobState::Expired))
    }

    /// Whether some filter needs the records (the index answers the
    /// queue, the time range and an indexed state).
    pub fn needs_records(&self) -> bool {
        self.task.is_some()
            || self.parent.is_some()
            || self.beat.is_some()
            || (self.state.is_some() && self.indexed_state().is_none())
    }

    /// Whether `job`, as a lookup shows it now, passes the filters.
    pub fn matches(&self, job: &Job) -> bool {
        self.task
            .as_ref()
            .is_none_or(|t| job.task.as_ref() == Some(t))
            && self.state.is_none_or(|s| job.state == s)
            && self.parent.is_none_or(|p| job.parent == Some(p))
            && self
                .beat
                .as_ref()
                .is_none_or(|b| job.schedule.as_ref() == Some(b))
    }

    /// How many index entries a page reads (per queue).
    pub fn window(&self) -> usize {
        if self.needs_records() {
            LIST_SCAN
        } else {
            self.limit + 1
        }
    }

    /// The range of ids to read, as (newest excluded, oldest included):
    /// below the cursor and `until`, from `since` on.
    pub fn id_range(&self) -> (Option<IdBound>, Option<IdBound>) {
        let upper = match (self.cursor, self.until) {
            (Some(c), Some(u)) => {
                let u = IdBound::from_time(u);
                Some(if u.id() < c { u } else { IdBound::Id(c) })
            }
            (Some(c), None) => Some(IdBound::Id(c)),
            (None, Some(u)) => Some(IdBound::from_time(u)),
            (None, None) => None,
        };
        (upper, self.since.map(IdBound::from_time))
    }
}

/// A place among ids: an id, or the first id of a millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdBound {
    Id(JobId),
    /// The smallest id made in this millisecond (ms since 1970).
    Ms(JobId),
}

impl IdBound {
    pub fn from_time(t: DateTime<Utc>) -> IdBound {
        let ms = t.timestamp_millis().clamp(0, (1 << 48) - 1) as u64;
        IdBound::Ms(JobId(
            uuid::Builder::from_unix_timestamp_millis(ms, &[0; 10]).into_uuid(),
        ))
    }

    pub fn id(self) -> JobId {
        match self {
            IdBound::Id(id) | IdBound::Ms(id) => id,
        }
    }

    /// As text that sorts among ids' texts as the bound sorts among ids:
    /// an id, or the millisecond's prefix of ids (no version digit yet).
    pub fn text(self) -> String {
        match self {
            IdBound::Id(id) => id.to_string(),
            IdBound::Ms(id) => id.to_string()[..13].to_string(),
        }
    }
}

impl fmt::Display for IdBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// Entries of the index a page loads at once.
pub const LIST_CHUNK: usize = 250;

/// One queue's part of a page: up to [`JobQuery::window`] ids from its
/// index, newest first.
pub struct Window {
    pub queue: String,
    pub ids: Vec<JobId>,
}

/// A page being read: the windows merged newest first, then looked at a
/// chunk at a time (the broker loads each chunk's records) until the page
/// is full or the entries run out.
pub struct Walk<'q> {
    query: &'q JobQuery,
    entries: Vec<(String, JobId)>,
    /// The next entry to look at.
    pos: usize,
    /// A window was full: older entries than the last may exist.
    more: bool,
    full: bool,
    jobs: Vec<Job>,
}

impl<'q> Walk<'q> {
    pub fn new(query: &'q JobQuery, windows: Vec<Window>) -> Walk<'q> {
        let window = query.window();
        // A full window may hide older entries: what is older than the
        // newest of its last entries is left for the next page, so that no
        // entry of another queue is skipped.
        let bound = windows
            .iter()
            .filter(|w| w.ids.len() >= window)
            .filter_map(|w| w.ids.last().copied())
            .max();
        let mut entries: Vec<(String, JobId)> = windows
            .into_iter()
            .flat_map(|w| {
                let queue = w.queue;
                w.ids.into_iter().map(move |id| (queue.clone(), id))
            })
            .filter(|(_, id)| bound.is_none_or(|b| *id >= b))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.1));
        // A window per queue, but a page looks at no more than one window
        // in all: the newest entries of every queue together.
        let cut = entries.len() > window;
        entries.truncate(window);
        Walk {
            query,
            entries,
            pos: 0,
            more: bound.is_some() || cut,
            full: false,
            jobs: Vec::new(),
        }
    }

    /// The entries whose jobs to load next (none once the walk is over).
    pub fn next_chunk(&self) -> &[(String, JobId)] {
        if self.full {
            return &[];
        }
        let end = (self.pos + LIST_CHUNK).min(self.entries.len());
        &self.entries[self.pos..end]
    }

    /// Takes the jobs of the chunk [`Walk::next_chunk`] gave, in its order,
    /// as a lookup shows them now (`None`: the record is gone).
    pub fn feed(&mut self, jobs: Vec<Option<Job>>) {
        for job in jobs {
            self.pos += 1;
            if let Some(job) = job.filter(|j| self.query.matches(j)) {
                self.jobs.push(job);
                if self.jobs.len() >= self.query.limit {
                    self.full = true;
                    return;
                }
            }
        }
    }

    pub fn page(self) -> JobPage {
        let left = self.pos < self.entries.len() || self.more;
        let last = self.pos.checked_sub(1).map(|i| self.entries[i].1);
        JobPage {
            jobs: self.jobs,
            next: if left { last } else { None },
        }
    }
}

/// A cursor as clients see it: the id itself.
pub fn parse_cursor(s: &str) -> Option<JobId> {
    Uuid::from_str(s).ok().map(JobId)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filtered page looks at no more than [`LIST_SCAN`] entries in
    /// all, the newest of every queue, and says where to go on. Before,
    /// each queue's window was looked at whole: with jobs spread evenly
    /// over three queues, about 3,000 records were loaded for one page.
    #[test]
    fn a_page_looks_at_one_window_over_all_queues() {
        let query = JobQuery {
            task: Some("nope".into()),
            limit: 1,
            ..JobQuery::default()
        };
        let id =
            |ms: u64| JobId(uuid::Builder::from_unix_timestamp_millis(ms, &[0; 10]).into_uuid());
        // Queue q takes every third millisecond, newest first.
        let windows = (0..3u64)
            .map(|q| Window {
                queue: format!("q{q}"),
                ids: (0..LIST_SCAN as u64)
                    .map(|i| id(1_000_000 - 3 * i - q))
                    .collect(),
            })
            .collect();
        let mut walk = Walk::new(&query, windows);
        let mut looked = Vec::new();
        loop {
            let chunk = walk.next_chunk().to_vec();
            if chunk.is_empty() {
                break;
            }
            looked.extend(chunk.iter().map(|e| e.1));
            walk.feed(vec![None; chunk.len()]);
        }
        assert_eq!(looked.len(), LIST_SCAN);
        // The newest of all, in order: none skipped.
        let newest: Vec<JobId> = (0..LIST_SCAN as u64).map(|i| id(1_000_000 - i)).collect();
        assert_eq!(looked, newest);
        assert_eq!(walk.page().next, looked.last().copied());
    }

    #[test]
    fn a_millisecond_bound_sorts_before_every_id_of_that_millisecond() {
        let t = DateTime::parse_from_rfc3339("2026-12-03T10:00:00.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let b = IdBound::from_time(t);
        let ms = t.timestamp_millis() as u64;
        let id = JobId(uuid::Builder::from_unix_timestamp_millis(ms, &[0xff; 10]).into_uuid());
        let low = JobId(uuid::Builder::from_unix_timestamp_millis(ms, &[0; 10]).into_uuid());
        let before =
            JobId(uuid::Builder::from_unix_timestamp_millis(ms - 1, &[0xff; 10]).into_uuid());
        assert!(b.text() <= low.to_string() && b.text() < id.to_string());
        assert!(before.to_string() < b.text());
        assert!(b.id() <= low && before < b.id());
    }
}
