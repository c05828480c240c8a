//! What a broker stores of a workflow (the engine that walks the tree is
//! `crate::workflow`): one record per workflow, apart from its members'
//! queues, and one outbox per queue.
//!
//! - **The record** (Redis: the hash `runner:{wf:<id>}`, a slot of its
//!   own) holds the compiled tree (`spec`), the state, the counts, and one
//!   field per step that ended: `r:<path>` for a job (its outcome),
//!   `c:<path>` for a group or chain that completed, `n:<path>` the count of
//!   a group's completed members, `l:<path>` the job a step launched.
//!   Every mark is set-if-absent, so applying the same end twice changes
//!   nothing, and a group's count moves only with a new mark: a member
//!   redelivered after a crash, or two members ending at once, can never
//!   count twice or complete a group twice.
//! - **The outbox** (`runner:{q}:wfout`, in the member's queue's slot) gets
//!   the id of every workflow member whose record turns final, written by
//!   the same script (or under the same lock) that writes the record. The
//!   engine applies an entry and then removes it; an entry older than
//!   [`OUTBOX_STALE`] was left by a process that died in between, and the
//!   next due check of the queue hands it to a worker to apply again.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An outbox entry this old was not applied by whoever wrote it.
pub const OUTBOX_STALE: Duration = Duration::from_secs(10);
/// A workflow member's record is kept at least this long, whatever result
/// TTL its step asks for: an end nobody applied is applied again from the
/// member's record once its outbox entry is stale (by any worker of the
/// queue, after a restart of all of them), and a record gone by then would
/// leave the workflow running with nothing to advance it.
pub const MEMBER_MIN_RESULT_TTL: Duration = Duration::from_secs(600);
/// An outbox entry that failed to apply (its workflow's record or its
/// member's record cannot be read, a launch failed) is handed out again
/// this long after, behind the others.
pub const OUTBOX_RETRY: Duration = Duration::from_secs(60);
/// How far ahead of now an outbox entry put behind (`outbox_later`) is
/// scored so that a due check hands it out again `after` from now: it is
/// stale [`OUTBOX_STALE`] after its score.
pub fn later_shift(after: Duration) -> Duration {
    after.saturating_sub(OUTBOX_STALE)
}
/// The most stale entries one due check hands out.
pub const OUTBOX_BATCH: usize = 100;
/// How long a running workflow's record lives without an end (it is then
/// kept for its own TTL from its end).
pub const RUNNING_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WfState {
    Running,
    Succeeded,
    Failed,
    Revoked,
}

impl WfState {
    pub fn as_str(self) -> &'static str {
        match self {
            WfState::Running => "running",
            WfState::Succeeded => "succeeded",
            WfState::Failed => "failed",
            WfState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<WfState> {
        Some(match s {
            "running" => WfState::Running,
            "succeeded" => WfState::Succeeded,
            "failed" => WfState::Failed,
            "revoked" => WfState::Revoked,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        self != WfState::Running
    }

    /// The job state a workflow event shows for this state.
    pub fn as_job_state(self) -> crate::queue::JobState {
        use crate::queue::JobState;
        match self {
            WfState::Running => JobState::Started,
            WfState::Succeeded => JobState::Success,
            WfState::Failed => JobState::Failure,
            WfState::Revoked => JobState::Revoked,
        }
    }
}

/// The `queue` of a workflow's events on the job event feed.
pub const EVENT_QUEUE: &str = "~wf";

/// A workflow's event as the job event feed carries it: its id, its state
/// as a job state (running is STARTED), and the members done so far as
/// progress (`total` is 0: the record has it; `message` is the state).
pub fn event(id: super::JobId, state: WfState, done: u64) -> super::JobEvent {
    super::JobEvent {
        id,
        queue: EVENT_QUEUE.to_string(),
        state: state.as_job_state(),
        progress: Some(super::Progress {
            done,
            total: 0,
            message: Some(state.as_str().to_string()),
        }),
        record: None,
    }
}

/// What a mark records.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MarkKind {
    /// A member job succeeded (counts toward `done`).
    Success,
    /// A member job failed for good (counts toward `done`; the first one
    /// fails a running workflow).
    Failure,
    /// A group or chain completed (inside an enclosing group).
    Complete,
}

impl MarkKind {
    pub fn code(self) -> &'static str {
        match self {
            MarkKind::Success => "S",
            MarkKind::Failure => "F",
            MarkKind::Complete => "C",
        }
    }
}

/// One set-if-absent mark of a workflow record.
#[derive(Clone, Debug, PartialEq)]
pub struct WfMark {
    pub kind: MarkKind,
    /// `r:<path>` or `c:<path>`.
    pub field: String,
    pub value: String,
    /// `n:<group path>`: counted up when the mark is new.
    pub counter: Option<String>,
}

/// What [`crate::queue::Broker::wf_mark`] found and did.
#[derive(Clone, Debug, PartialEq)]
pub struct WfMarked {
    /// The state after the marks.
    pub state: WfState,
    /// Member jobs ended so far.
    pub done: u64,
    /// The path of the member whose failure failed the workflow, if one did.
    pub failed: Option<String>,
    /// Per mark: its counter's value after the whole call (0 without
    /// one): marks of one group in one call all see the same count.
    pub counts: Vec<u64>,
    /// Per mark: whether this call wrote a new mark of its counter (of
    /// the mark itself, without one). Marks are only ever added, so one
    /// call alone sees its group's count reach the group's size with this
    /// set: the call that completed the group, the first to know it.
    pub fresh: Vec<bool>,
}

/// A workflow record as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct WfStored {
    pub spec: String,
    pub state: WfState,
    pub done: u64,
    pub total: u64,
    pub failed: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When its tree was made (see [`Broker::wf_mark`]); `None` in a
    /// record stored before this was kept.
    ///
    /// [`Broker::wf_mark`]: super::Broker::wf_mark
    pub made: Option<i64>,
    /// `r:`, `c:`, `n:` and `l:` fields.
    pub fields: HashMap<String, String>,
}

/// The fields of a workflow record that are not marks.
pub(crate) const SPEC: &str = "spec";
pub(crate) const STATE: &str = "state";
pub(crate) const DONE: &str = "done";
pub(crate) const TOTAL: &str = "total";
pub(crate) const FAILED: &str = "failed";
pub(crate) const CREATED: &str = "created";
/// When the record's tree was made (`Spec::created_ms`): the ids of its
/// jobs are derived from it. (Records stored before it was kept have
/// none.)
pub(crate) const MADE: &str = "made";
pub(crate) const FINISHED: &str = "finished";

impl WfStored {
    /// Reads a record from its fields (a Redis hash, or the embedded
    /// broker's map).
    pub(crate) fn from_fields(mut f: HashMap<String, String>) -> Option<WfStored> {
        let num = |f: &HashMap<String, String>, k: &str| {
            f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
        };
        let state = WfState::parse(f.get(STATE)?)?;
        let done = num(&f, DONE).max(0) as u64;
        let total = num(&f, TOTAL).max(0) as u64;
        let created_at = super::ms_to_time(num(&f, CREATED));
        let finished_at = f
            .get(FINISHED)
            .and_then(|v| v.parse::<i64>().ok())
            .map(super::ms_to_time);
        let spec = f.remove(SPEC)?;
        let failed = f.remove(FAILED).filter(|s| !s.is_empty());
        let made = f.remove(MADE).and_then(|v| v.parse::<i64>().ok());
        for k in [STATE, DONE, TOTAL, CREATED, FINISHED] {
            f.remove(k);
        }
        Some(WfStored {
            spec,
            state,
            done,
            total,
            failed,
            created_at,
            finished_at,
            made,
            fields: f,
        })
    }
}
