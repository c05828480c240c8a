//! `/healthz`, `/readyz`, `/metrics`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};

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
async fn readyz(State(ctx): State<AppState>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), ctx.broker.queues()).await {
        Ok(Ok(_)) => Ok("ready\n"),
        Ok(Err(e)) => Err(ApiError::unavailable(format!(
            "{} broker: {e}",
            ctx.broker.kind()
        ))),
        Err(_) => Err(ApiError::unavailable(format!(
            "{} broker: no answer within 2 s",
            ctx.broker.kind()
        ))),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "metrics", body = String)))]
async fn metrics(State(ctx): State<AppState>) -> impl IntoResponse {
    let body = ctx.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}
