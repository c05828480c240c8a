//! The span every host call runs in.
//!
//! The sandbox's adapter opens the job's span (task, job id); each service
//! call opens a child `host_call` span here with the capability and the
//! operation, and records the outcome (`ok` or the [`HostError`] kind) and
//! the duration when the call ends. One line per call at `debug`, failures at
//! `info`, so an operator sees denied and failed calls without enabling
//! debug logs.
//!
//! Metrics are not counted here but by the runtime's sandbox adapter
//! (`runner_host_calls_total{capability,outcome}`,
//! `runner_host_call_seconds{capability}`), which sees every call a task
//! makes, including the ones refused before they reach a service (not
//! granted, not configured) and the ones the job's time limit cuts short;
//! counting here as well would count those calls twice.

use std::future::Future;
use std::time::Instant;

use tracing::Instrument;

use crate::HostError;

/// The most of a failed call's message a log line carries: a message can
/// quote what a task sent (a method, a path), as long as the task likes.
pub const LOGGED_ERROR_MAX: usize = 1024;

/// `e` as its kind and message, the message capped at [`LOGGED_ERROR_MAX`]
/// bytes ([`crate::error::cap_text`]).
fn logged(e: &HostError) -> String {
    let msg = crate::error::cap_text(e.message().to_owned(), LOGGED_ERROR_MAX);
    format!("{}: {msg}", e.kind())
}

/// Runs `fut` inside a `host_call` span and records its outcome.
pub async fn traced<T, F>(
    capability: &'static str,
    op: &'static str,
    fut: F,
) -> Result<T, HostError>
where
    F: Future<Output = Result<T, HostError>>,
{
    let span = tracing::info_span!(
        "host_call",
        capability,
        op,
        outcome = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = fut.instrument(span.clone()).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    span.record("outcome", outcome);
    span.record("duration_ms", duration_ms);
    let _enter = span.enter();
    match &result {
        Ok(_) => tracing::debug!(capability, op, outcome, duration_ms, "host call"),
        Err(e) => {
            let error = logged(e);
            tracing::info!(
                capability,
                op,
                outcome,
                duration_ms,
                error,
                "host call failed"
            )
        }
    }
    result
}
