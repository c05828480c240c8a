//! The span every host call runs in.
//!
//! The sandbox's adapter opens the job's span (task, job id); each service
//! call opens a child `host_call` span here with the capability and the
//! operation, and records the outcome (`ok` or the [`HostError`] kind) and
//! the duration when the call ends. One line per call at `debug`, failures at
//! `info`, so an operator sees denied and failed calls without enabling
//! debug logs.
//!
//! Each call is also counted in metrics (through the `metrics` facade; the
//! runtime installs the Prometheus recorder):
//! `runner_host_calls_total{capability, op, outcome}` and
//! `runner_host_call_duration_seconds{capability, op}`.

use std::future::Future;
use std::time::Instant;

use tracing::Instrument;

use crate::HostError;

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
    metrics::counter!("runner_host_calls_total", "capability" => capability, "op" => op, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("runner_host_call_duration_seconds", "capability" => capability, "op" => op)
        .record(duration_ms / 1000.0);
    span.record("outcome", outcome);
    span.record("duration_ms", duration_ms);
    let _enter = span.enter();
    match &result {
        Ok(_) => tracing::debug!(capability, op, outcome, duration_ms, "host call"),
        Err(e) => {
            tracing::info!(capability, op, outcome, duration_ms, error = %e, "host call failed")
        }
    }
    result
}
