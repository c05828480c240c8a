//! How the end of a run becomes a settlement: the final record, a retry
//! with backoff, or a dead letter. Pure functions of the delivery and the
//! outcome (and the clock), so each rule is unit-tested here.

use chrono::Utc;

use crate::queue::job::MAX_DELAY;
use crate::queue::{
    Completion, Delivery, FailureKind, JobFailure, JobId, JobState, Progress, Settlement,
};
use crate::sandbox::Outcome;

/// The record of a job revoked while it waited in this worker.
pub(super) fn revoked_before_start(d: &Delivery) -> Completion {
    let job = d.job.revoked("revoked before it started", Utc::now());
    Completion {
        lease: d.lease.clone(),
        settlement: Settlement::Finish { job, dead: false },
        had_progress: false,
    }
}

/// The final FAILURE of `d`, kept as a dead letter.
pub(super) fn dead(d: &Delivery, kind: &str, message: impl Into<String>) -> Settlement {
    finish(
        d,
        JobState::Failure,
        None,
        Some(JobFailure::new(kind, message)),
        true,
    )
}

pub(super) fn finish(
    d: &Delivery,
    state: JobState,
    result: Option<String>,
    error: Option<JobFailure>,
    dead: bool,
) -> Settlement {
    let mut job = d.job.clone();
    job.state = state;
    job.result = result;
    job.error = error;
    job.finished_at = Some(Utc::now());
    job.started_at = Some(d.leased_at);
    Settlement::Finish { job, dead }
}

/// A retry per the job's policy, or the final FAILURE when retries are spent.
pub(super) fn retry_or_fail(d: &Delivery, kind: &str, message: String) -> Settlement {
    let job = &d.job;
    let retries_done = job.attempt.saturating_sub(1);
    if retries_done < job.retry.max_retries {
        let delay = job.retry.backoff(job.attempt);
        // The policy's numbers come from users: a backoff beyond the
        // longest delay a job may have is a final failure, never a due
        // time that overflows (or waits for millennia).
        let Some(due) = (delay <= MAX_DELAY)
            .then(|| chrono::Duration::from_std(delay).ok())
            .flatten()
            .and_then(|delay| Utc::now().checked_add_signed(delay))
        else {
            return dead(
                d,
                kind,
                format!(
                    "{message} (no retry: its backoff of {} s is past any date; at most {} s)",
                    delay.as_secs(),
                    MAX_DELAY.as_secs()
                ),
            );
        };
        let error = Some(JobFailure::new(kind, message.clone()));
        let mut next = job.clone();
        next.state = JobState::Retry;
        next.attempt += 1;
        next.eta = Some(due);
        next.error = error.clone();
        next.worker = None;
        next.started_at = None;
        next.progress = None;
        next.redeliveries = 0;
        let if_revoked = job.revoked(
            format!("revoked; last attempt ended: {message}"),
            Utc::now(),
        );
        Settlement::Retry {
            job: next,
            due,
            if_revoked,
        }
    } else {
        let message = if job.retry.max_retries > 0 {
            format!(
                "{message} (gave up after {} retries)",
                job.retry.max_retries
            )
        } else {
            message
        };
        dead(d, kind, message)
    }
}

pub(super) fn failure(d: &Delivery, kind: FailureKind, name: &str, message: String) -> Settlement {
    if d.job.retry.retries(kind) {
        retry_or_fail(d, name, message)
    } else {
        dead(d, name, message)
    }
}

/// The settlement of a run that ended with `outcome`. A run stopped as
/// `Revoked` while the worker shuts down was stopped by the shutdown, not
/// by a revoke: it is handed back.
pub(super) fn settlement_for(d: &Delivery, outcome: Outcome, shutting_down: bool) -> Settlement {
    match outcome {
        Outcome::Success(out) => {
            let result = (!d.job.ignore_result).then_some(out);
            finish(d, JobState::Success, result, None, false)
        }
        Outcome::Retry(m) => retry_or_fail(d, "retry", m),
        Outcome::HostFailure(m) => retry_or_fail(d, "infrastructure", m),
        Outcome::Fail(m) => failure(d, FailureKind::Fail, "fail", m),
        Outcome::FuelExhausted => failure(
            d,
            FailureKind::FuelExhausted,
            "fuel_exhausted",
            "fuel exhausted".into(),
        ),
        Outcome::MemoryLimit => failure(
            d,
            FailureKind::MemoryLimit,
            "memory_limit",
            "memory limit reached".into(),
        ),
        Outcome::TimeLimit => failure(
            d,
            FailureKind::TimeLimit,
            "time_limit",
            "time limit reached".into(),
        ),
        Outcome::Trap { message, backtrace } => {
            let m = match backtrace {
                Some(b) => format!("{message}\n{b}"),
                None => message,
            };
            failure(d, FailureKind::Trap, "trap", m)
        }
        Outcome::InvalidOutput(m) => failure(d, FailureKind::InvalidOutput, "invalid_output", m),
        Outcome::Revoked if shutting_down => Settlement::Release { started: true },
        Outcome::Revoked => finish(
            d,
            JobState::Revoked,
            None,
            Some(JobFailure::new("revoked", "terminated by revoke")),
            false,
        ),
    }
}

/// Lists the children this attempt enqueued on the parent's record (the
/// final one, or the retry's, to be completed by later attempts).
pub(super) fn record_children(settlement: &mut Settlement, children: Vec<JobId>) {
    let record = match settlement {
        Settlement::Finish { job, .. } | Settlement::Retry { job, .. } => job,
        Settlement::Release { .. } => return,
    };
    for id in children {
        if !record.children.contains(&id) {
            record.children.push(id);
        }
    }
}

/// Puts what the run used (fuel, peak memory) and what it logged on the
/// job's record, final or waiting for its retry.
pub(super) fn record_usage(
    settlement: &mut Settlement,
    fuel: Option<u64>,
    memory_peak: u64,
    log: Vec<crate::queue::job::LogEntry>,
) {
    if let Settlement::Finish { job, .. } | Settlement::Retry { job, .. } = settlement {
        job.fuel_used = fuel;
        job.memory_peak_bytes = Some(memory_peak);
        job.log = crate::queue::job::kept_log(log);
    }
}

/// Puts the run's last progress report on its final record.
pub(super) fn record_last_progress(
    settlement: &mut Settlement,
    progress: Option<crate::sandbox::Progress>,
) {
    if let (Settlement::Finish { job, .. }, Some(p)) = (settlement, progress) {
        job.progress = Some(Progress {
            done: p.done,
            total: p.total,
            message: p.message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Job;
    use crate::worker::test_delivery as delivery;

    fn finished(s: &Settlement) -> (&Job, bool) {
        match s {
            Settlement::Finish { job, dead } => (job, *dead),
            other => panic!("not final: {other:?}"),
        }
    }

    #[test]
    fn success_is_final_with_its_output_and_start_time() {
        let d = delivery(1, 3);
        let s = settlement_for(&d, Outcome::Success("{\"ok\":1}".into()), false);
        let (job, dead) = finished(&s);
        assert_eq!(job.state, JobState::Success);
        assert_eq!(job.result.as_deref(), Some("{\"ok\":1}"));
        assert_eq!(job.started_at, Some(d.leased_at));
        assert!(job.finished_at.is_some() && !dead);
    }

    #[test]
    fn a_retry_with_retries_left_is_the_next_attempt_later() {
        let d = delivery(1, 3);
        let before = Utc::now();
        let Settlement::Retry {
            job,
            due,
            if_revoked,
        } = settlement_for(&d, Outcome::Retry("busy".into()), false)
        else {
            panic!("not a retry");
        };
        assert_eq!(job.state, JobState::Retry);
        assert_eq!(job.attempt, 2);
        assert_eq!(job.eta, Some(due));
        assert!(due >= before);
        assert_eq!(job.error.as_ref().unwrap().message, "busy");
        assert_eq!(if_revoked.state, JobState::Revoked);
        assert!(if_revoked.error.unwrap().message.contains("busy"));
    }

    #[test]
    fn a_backoff_past_any_date_is_a_final_failure_not_a_panic() {
        let mut d = delivery(1, 3);
        d.job.retry.backoff_base_ms = 10_u64.pow(16);
        d.job.retry.backoff_cap_ms = u64::MAX;
        let s = settlement_for(&d, Outcome::Retry("busy".into()), false);
        let (job, dead) = finished(&s);
        assert_eq!(job.state, JobState::Failure);
        assert!(dead);
        assert!(
            job.error
                .as_ref()
                .unwrap()
                .message
                .contains("past any date"),
            "{job:?}"
        );
    }

    #[test]
    fn retries_spent_is_a_dead_failure() {
        let d = delivery(4, 3);
        let s = settlement_for(&d, Outcome::HostFailure("smtp down".into()), false);
        let (job, dead) = finished(&s);
        assert_eq!(job.state, JobState::Failure);
        assert_eq!(job.error.as_ref().unwrap().kind, "infrastructure");
        assert!(dead);
    }

    #[test]
    fn fail_is_final_without_a_retry() {
        let d = delivery(1, 3);
        let s = settlement_for(&d, Outcome::Fail("bad".into()), false);
        let (job, dead) = finished(&s);
        assert_eq!(job.state, JobState::Failure);
        assert_eq!(job.error.as_ref().unwrap().kind, "fail");
        assert!(dead);
    }

    #[test]
    fn a_trap_keeps_its_backtrace() {
        let d = delivery(1, 0);
        let s = settlement_for(
            &d,
            Outcome::Trap {
                message: "unreachable".into(),
                backtrace: Some("at run".into()),
            },
            false,
        );
        let (job, _) = finished(&s);
        assert_eq!(job.error.as_ref().unwrap().message, "unreachable\nat run");
    }

    #[test]
    fn revoked_is_final_unless_the_worker_is_shutting_down() {
        let d = delivery(1, 3);
        let s = settlement_for(&d, Outcome::Revoked, false);
        let (job, dead) = finished(&s);
        assert_eq!(job.state, JobState::Revoked);
        assert!(!dead);
        assert!(matches!(
            settlement_for(&d, Outcome::Revoked, true),
            Settlement::Release { started: true }
        ));
    }

    #[test]
    fn children_and_last_progress_go_on_the_record() {
        let d = delivery(1, 3);
        let mut s = settlement_for(&d, Outcome::Success("{}".into()), false);
        let (a, b) = (JobId::new(), JobId::new());
        record_children(&mut s, vec![a, b, a]);
        record_last_progress(
            &mut s,
            Some(crate::sandbox::Progress {
                done: 2,
                total: 3,
                message: None,
            }),
        );
        let (job, _) = finished(&s);
        assert_eq!(job.children, [a, b]);
        assert_eq!(
            job.progress.as_ref().map(|p| (p.done, p.total)),
            Some((2, 3))
        );
    }
}
