//! The HTTP API (`/v1/...`, axum): modules, task names, jobs, queues,
//! workers, schedules and a live event stream, plus `/healthz`, `/readyz`,
//! `/metrics`, the dashboard (`/dashboard`) and the OpenAPI document at
//! `/v1/openapi.json`, generated from the handlers'
//! annotations (the same registration builds the router and the document,
//! so a route cannot be missing from it).
//!
//! [`router`] builds the whole app from an [`ApiContext`]; [`serve`] runs it
//! on a listener the caller bound (tests bind `127.0.0.1:0`) until a
//! shutdown future resolves.
//!
//! Every error is JSON, `{"error": {"code": "...", "message": "..."}}`,
//! with a status that says whose fault it is (see [`ApiError`]).

pub mod auth;
mod dashboard;
mod drain;
mod error;
mod events;
mod jobs;
mod modules;
mod queues;
mod schedules;
pub mod schema;
mod system;
pub use system::{OpsState, ops_router};
mod tasks;
mod workflows;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt as _};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use auth::SecurityAddon;
pub use auth::{Auth, Role};
pub use error::{ApiError, ApiJson, ApiPath, ApiQuery};

use crate::producer::Producer;
use crate::queue::Broker;
use crate::registry::Registry;
use crate::sandbox::Sandbox;

/// What the handlers share.
pub struct ApiContext {
    pub registry: Arc<dyn Registry>,
    pub broker: Arc<dyn Broker>,
    pub producer: Producer,
    /// Validates and compiles uploads (the compiled module stays cached).
    pub sandbox: Sandbox,
    pub auth: Auth,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// Renders `/metrics`; `None` serves an empty page.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The schedules (the loop may run in another process); `None`
    /// answers 503 on `/v1/schedules`.
    pub scheduler: Option<crate::scheduler::Scheduler>,
    /// Cancelled when the server starts shutting down: open event streams
    /// end then, so that a graceful shutdown does not wait on a dashboard.
    pub closing: tokio_util::sync::CancellationToken,
}

pub type AppState = Arc<ApiContext>;

/// An event-stream response: a comment every 15 s keeps proxies from
/// closing it, and it ends when the server starts shutting down.
fn sse<S>(ctx: &ApiContext, stream: S) -> Sse<impl Stream<Item = S::Item> + use<S>>
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let stream = stream.take_until(ctx.closing.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "runner",
        description = "WASM-sandboxed task runner: modules, task names, jobs, queues, workers, schedules."
    ),
    modifiers(&SecurityAddon),
    components(schemas(error::ErrorBody, crate::queue::JobEvent, events::Lagged)),
    tags(
        (name = "modules", description = "Task components, stored by sha256"),
        (name = "tasks", description = "Task names bound to modules, with defaults and grants"),
        (name = "jobs", description = "Enqueue, inspect, wait for and revoke jobs"),
        (name = "queues", description = "Queues, dead letters, workers"),
        (name = "schedules", description = "Cron and interval beats"),
        (name = "workflows", description = "Chains, groups and chords of jobs"),
        (name = "system", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(system::routes())
        .merge(modules::routes())
        .merge(tasks::routes())
        .merge(jobs::routes())
        .merge(events::routes())
        .merge(queues::routes())
        .merge(schedules::routes())
        .merge(workflows::routes())
}

/// The OpenAPI document of every route.
pub fn openapi() -> OpenApi {
    api_router().split_for_parts().1
}

/// The whole app: routes, body limit, request ids, access logs.
pub fn router(ctx: ApiContext) -> Router {
    let max_body = ctx.max_body;
    let (router, doc) = api_router().split_for_parts();
    let doc = Arc::new(doc);
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(dashboard::routes())
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found(format!("no route for {}", uri.path()))
        })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} does not take {method}", uri.path()),
            )
        })
        .with_state(Arc::new(ctx))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(drain::drain_unread))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_response(
                    |res: &axum::http::Response<_>, latency: Duration, _span: &tracing::Span| {
                        tracing::info!(status = res.status().as_u16(), ms = latency.as_millis() as u64, "request");
                    },
                ),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// A long poll's `wait`, cut short when the server starts shutting down:
/// then it answers `now` (what a long poll answers when its wait is over:
/// the state as it is). Otherwise a stop waited for every open long poll,
/// up to five minutes.
pub(crate) async fn unless_closing<T>(
    ctx: &ApiContext,
    wait: impl std::future::Future<Output = T>,
    now: impl std::future::Future<Output = T>,
) -> T {
    tokio::select! {
        answer = wait => answer,
        () = ctx.closing.cancelled() => now.await,
    }
}

/// Serves the app of `ctx` on `listener` until `shutdown` resolves. Then
/// event streams end and long polls answer at once (`ctx.closing` is
/// cancelled), and the requests still in flight are waited for.
pub async fn serve(
    listener: TcpListener,
    ctx: ApiContext,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = ctx.closing.clone();
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
        })
        .await
}
