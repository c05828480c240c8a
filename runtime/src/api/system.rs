//! `/healthz`, `/readyz`, `/metrics`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::queue::{Broker, QueueStats};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "alive", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// The broker (Redis) answers: this process can take requests.
#[utoipa::path(get, path = "/readyz", tag = "system", responses(
    (status = 200, description = "ready", body = String),
    (status = 503, description = "the broker is unreachable", body = super::error::ErrorBody),
))]
async fn readyz(State(ctx): State<AppState>) -> Response {
    readiness(broker_ready(ctx.broker.as_ref()).await)
}

/// `/readyz`'s answer: "not ready" is an answer, not a failed request (not
/// logged: probes come every few seconds during an outage).
fn readiness(ready: Result<(), String>) -> Response {
    match ready {
        Ok(()) => "ready\n".into_response(),
        Err(why) => ApiError::unavailable(why).unlogged(),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "metrics", body = String)))]
async fn metrics(State(ctx): State<AppState>) -> impl IntoResponse {
    render_metrics(Some(ctx.broker.as_ref()), ctx.metrics.as_ref()).await
}

/// Whether `broker` answers within 2 s (the error says why not). Its
/// queues' depths, read on the way, are recorded as gauges.
async fn broker_ready(broker: &dyn Broker) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(2), broker.queues()).await {
        Ok(Ok(stats)) => {
            record_queue_depths(&stats);
            Ok(())
        }
        Ok(Err(e)) => Err(format!("{} broker: {e}", broker.kind())),
        Err(_) => Err(format!("{} broker: no answer within 2 s", broker.kind())),
    }
}

/// `runner_queue_jobs{queue, state}`: ready, delayed, running and dead jobs
/// per queue, as last read (on each scrape: nothing polls for them).
fn record_queue_depths(stats: &[QueueStats]) {
    for q in stats {
        for (state, n) in [
            ("ready", q.ready),
            ("delayed", q.delayed),
            ("running", q.in_flight),
            ("dead", q.dead),
        ] {
            metrics::gauge!("runner_queue_jobs", "queue" => q.name.clone(), "state" => state)
                .set(n as f64);
        }
    }
}

/// The `/metrics` page: the queue depths read now, then every metric.
async fn render_metrics(
    broker: Option<&dyn Broker>,
    handle: Option<&PrometheusHandle>,
) -> impl IntoResponse + use<> {
    if let Some(broker) = broker
        && let Err(e) = broker_ready(broker).await
    {
        tracing::debug!("queue depths not read for /metrics: {e}");
    }
    let body = handle.map(|h| h.render()).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}

/// What `/readyz` of a worker or scheduler process checks: its Redis
/// answers and, for a worker, it is consuming.
#[derive(Clone, Default)]
pub struct OpsState {
    /// Set once the process has connected: before, `/readyz` answers 503
    /// (the process waits for Redis).
    pub broker: Arc<OnceLock<Arc<dyn Broker>>>,
    /// A worker's: set while it takes jobs (not before it subscribed, not
    /// once it stops).
    pub consuming: Option<tokio::sync::watch::Sender<bool>>,
    pub metrics: Option<PrometheusHandle>,
}

/// `/metrics`, `/healthz` and `/readyz` of a process without the API
/// (`runner worker`, `runner scheduler` with `--metrics-listen`).
pub fn ops_router(state: OpsState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|State(s): State<OpsState>| async move {
                let Some(broker) = s.broker.get() else {
                    return readiness(Err("waiting for Redis".into()));
                };
                if let Some(c) = &s.consuming
                    && !*c.borrow()
                {
                    return readiness(Err("the worker is not consuming".into()));
                }
                readiness(broker_ready(broker.as_ref()).await)
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<OpsState>| async move {
                render_metrics(s.broker.get().map(|b| b.as_ref()), s.metrics.as_ref()).await
            }),
        )
        .with_state(state)
}
