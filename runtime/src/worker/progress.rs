//! Forwarding a running job's progress to the broker. The sandbox's sink
//! must not block, so it puts each report in a slot that holds the newest
//! one only (a task reporting in a loop while a store waits on a slow
//! broker holds one report, not all of them), and a task stores the
//! newest at most every [`PROGRESS_EVERY`]; a job that ends within
//! [`FIRST_PROGRESS_AFTER`] stores none (its last report goes into its
//! final record instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::queue::{Broker, Lease, Progress};
use crate::sandbox::CancelToken;

/// Progress is stored at most this often per job...
pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// ...and not before the job has run this long.
pub(super) const FIRST_PROGRESS_AFTER: Duration = Duration::from_millis(100);

/// The sink's end of a run's progress slot, and the forwarder's.
pub(super) fn slot() -> (
    watch::Sender<Option<crate::sandbox::Progress>>,
    watch::Receiver<Option<crate::sandbox::Progress>>,
) {
    watch::channel(None)
}

/// Stores the reports put in the slot `prx` for `lease` until the run is
/// over (`run_over`) or the sender is gone; sets `stored` once one was
/// stored.
pub(super) fn forward(
    broker: Arc<dyn Broker>,
    lease: Lease,
    stored: Arc<AtomicBool>,
    run_over: CancelToken,
    mut prx: watch::Receiver<Option<crate::sandbox::Progress>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // A job that ends within the first 100 ms stores no progress at
        // all: its last report goes into its final record instead.
        let mut last = Instant::now() - (PROGRESS_EVERY - FIRST_PROGRESS_AFTER);
        loop {
            tokio::select! {
                next = prx.changed() => if next.is_err() { break },
                _ = run_over.cancelled() => break,
            }
            // Wait out the throttle (newer reports replace the one in the
            // slot), and stop at once when the run ends (the job must not
            // wait).
            let sleep = tokio::time::sleep(PROGRESS_EVERY.saturating_sub(last.elapsed()));
            tokio::pin!(sleep);
            let mut ended = false;
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    next = prx.changed() => if next.is_err() {
                        ended = true;
                        break;
                    },
                    _ = run_over.cancelled() => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                break;
            }
            let Some(p) = prx.borrow_and_update().clone() else {
                continue;
            };
            stored.store(true, Ordering::Relaxed);
            let p = Progress {
                done: p.done,
                total: p.total,
                message: p.message,
            };
            if let Err(e) = broker.progress(&lease, &p).await {
                tracing::debug!(error = %e, "progress not stored");
            }
            last = Instant::now();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task reporting in a loop while the forwarder waits (on the
    /// throttle, or on a slow broker) fills one slot, not a queue: the
    /// forwarder then finds the newest report, and nothing else is held.
    #[test]
    fn a_burst_of_reports_is_held_as_its_newest() {
        let (tx, mut rx) = slot();
        for done in 0..100_000u64 {
            tx.send_replace(Some(crate::sandbox::Progress {
                done,
                total: 100_000,
                message: Some("x".repeat(64)),
            }));
        }
        assert!(rx.has_changed().unwrap());
        let newest = rx.borrow_and_update().clone().unwrap();
        assert_eq!(newest.done, 99_999);
        assert!(!rx.has_changed().unwrap(), "more than the newest was held");
    }
}
