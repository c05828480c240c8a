//! Forwarding a running job's progress to the broker. The sandbox's sink
//! must not block, so it hands each report to a task that stores the
//! newest one at most every [`PROGRESS_EVERY`]; a job that ends within
//! [`FIRST_PROGRESS_AFTER`] stores none (its last report goes into its
//! final record instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::queue::{Broker, Lease, Progress};
use crate::sandbox::CancelToken;

/// Progress is stored at most this often per job...
pub(super) const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// ...and not before the job has run this long.
pub(super) const FIRST_PROGRESS_AFTER: Duration = Duration::from_millis(100);

/// Stores the reports `reports` brings for `lease` until the run is over
/// (`run_over`) or the sender is gone; sets `stored` once one was stored.
pub(super) fn forward(
    broker: Arc<dyn Broker>,
    lease: Lease,
    stored: Arc<AtomicBool>,
    run_over: CancelToken,
    mut prx: mpsc::UnboundedReceiver<crate::sandbox::Progress>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // A job that ends within the first 100 ms stores no progress at
        // all: its last report goes into its final record instead.
        let mut last = Instant::now() - (PROGRESS_EVERY - FIRST_PROGRESS_AFTER);
        loop {
            let mut p = tokio::select! {
                next = prx.recv() => match next {
                    Some(p) => p,
                    None => break,
                },
                _ = run_over.cancelled() => break,
            };
            // Wait out the throttle, keeping only the newest report, and
            // stop at once when the run ends (the job must not wait).
            let sleep = tokio::time::sleep(PROGRESS_EVERY.saturating_sub(last.elapsed()));
            tokio::pin!(sleep);
            let mut ended = false;
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    next = prx.recv() => match next {
                        Some(newer) => p = newer,
                        None => {
                            ended = true;
                            break;
                        }
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
