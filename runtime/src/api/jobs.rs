//! `/v1/jobs`: enqueue (202 with the id), batch, read with long-poll,
//! revoke, and a job's events as server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Admin, Role, Submit};
use super::error::{ErrorBody, objects, optional_object};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::producer::parse_duration;
use crate::producer::{Caller, EnqueueRequest};
use crate::queue::{Enqueued, Job, JobEvent, JobId, JobLimits, RetryPolicy, RevokeOutcome};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enqueue))
        .routes(routes!(enqueue_batch))
        .routes(routes!(get_job))
        .routes(routes!(revoke_job))
        .routes(routes!(job_events))
}

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// A job to enqueue. `task` (or `module`) and `input` are what most
/// callers send; the rest overrides the task binding's defaults.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct JobRequest {
    pub task: Option<String>,
    /// `sha256:<hex>`: run an uploaded module with no task name.
    pub module: Option<String>,
    /// Any JSON value; `{}` when absent.
    #[schema(value_type = Object)]
    pub input: Option<serde_json::Value>,
    pub queue: Option<String>,
    /// Seconds before the job may run.
    pub countdown: Option<f64>,
    /// When the job may run (RFC 3339).
    pub eta: Option<DateTime<Utc>>,
    /// Drop the job unrun after this many seconds.
    pub expires_in: Option<f64>,
    pub expires: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    #[serde(deserialize_with = "optional_object")]
    pub retry: Option<RetryPolicy>,
    #[schema(value_type = Object)]
    #[serde(deserialize_with = "optional_object")]
    pub limits: Option<JobLimits>,
    pub rate_limit: Option<String>,
    /// A second request with the same key returns the first job.
    pub idempotency_key: Option<String>,
    /// Seconds the result is kept.
    pub result_ttl: Option<u64>,
}

impl JobRequest {
    fn into_enqueue(self) -> EnqueueRequest {
        EnqueueRequest {
            task: self.task,
            module: self.module,
            input: self
                .input
                .map(|v| v.to_string())
                .unwrap_or_else(|| "{}".to_string()),
            queue: self.queue,
            countdown_secs: self.countdown,
            eta: self.eta,
            expires: self.expires,
            expires_in_secs: self.expires_in,
            retry: self.retry,
            limits: self.limits,
            rate_limit: self.rate_limit,
            idempotency_key: self.idempotency_key,
            parent: None,
            result_ttl_secs: self.result_ttl,
            schedule: None,
            scheduled_for: None,
            depth: 0,
            id: None,
        }
    }
}

/// What `POST /v1/jobs` answers.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    /// `PENDING`, or the state of the earlier job with the same idempotency key.
    pub state: String,
    pub queue: String,
    pub task: Option<String>,
    /// False when an earlier job with the same idempotency key was returned.
    pub created: bool,
    pub eta: Option<DateTime<Utc>>,
}

impl From<Enqueued> for Accepted {
    fn from(e: Enqueued) -> Self {
        Accepted {
            id: e.job.id.to_string(),
            state: state_name(&e.job),
            queue: e.job.queue.clone(),
            task: e.job.task.clone(),
            created: e.created,
            eta: e.job.eta,
        }
    }
}

fn state_name(job: &Job) -> String {
    serde_json::to_value(job.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[serde(deserialize_with = "objects")]
    pub jobs: Vec<JobRequest>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    pub jobs: Vec<Accepted>,
}

/// Enqueues a job: `202 Accepted` with its id (and `Location`).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = JobRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "enqueued", body = Accepted),
        (status = 400, description = "malformed or invalid request, or a number above its maximum", body = ErrorBody),
        (status = 403, description = "a submit token asked for what only an admin may (a rate limit, a module, an unconfigured queue, higher limits or more retries than the task's)", body = ErrorBody),
        (status = 404, description = "unknown task or module", body = ErrorBody),
    ))]
async fn enqueue(
    State(ctx): State<AppState>,
    Submit(role): Submit,
    ApiJson(req): ApiJson<JobRequest>,
) -> Result<Response, ApiError> {
    let done = ctx
        .producer
        .enqueue_as(caller(role), req.into_enqueue())
        .await?;
    let location = format!("/v1/jobs/{}", done.job.id);
    let mut res = (StatusCode::ACCEPTED, axum::Json(Accepted::from(done))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// Enqueues many jobs at once; nothing is stored if one is invalid.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "enqueued", body = BatchAccepted),
        (status = 400, description = "a job is invalid (named by its index)", body = ErrorBody),
        (status = 403, description = "a job asks for what only an admin may (named by its index)", body = ErrorBody),
        (status = 404, description = "unknown task or module", body = ErrorBody),
    ))]
async fn enqueue_batch(
    State(ctx): State<AppState>,
    Submit(role): Submit,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<(StatusCode, axum::Json<BatchAccepted>), ApiError> {
    if req.jobs.is_empty() {
        return Err(ApiError::bad_request("jobs: empty batch"));
    }
    let reqs = req.jobs.into_iter().map(JobRequest::into_enqueue).collect();
    let done = ctx.producer.enqueue_batch_as(caller(role), reqs).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(BatchAccepted {
            jobs: done.into_iter().map(Accepted::from).collect(),
        }),
    ))
}

/// What a token's role may ask of the producer.
fn caller(role: Role) -> Caller {
    match role {
        Role::Admin => Caller::Admin,
        Role::Submit => Caller::Submitter,
    }
}

#[derive(Deserialize, IntoParams)]
pub struct WaitQuery {
    /// Long-poll: answer as soon as the job ends, or after this long
    /// (`30s`, `500ms`, seconds; at most 300 s).
    pub wait: Option<String>,
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid job id {id:?}: expected a UUID")))
}

/// A job record for clients: `input` and `result` as JSON values.
pub fn job_view(job: &Job) -> serde_json::Value {
    let mut v = serde_json::to_value(job).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        for key in ["input", "result"] {
            if let Some(serde_json::Value::String(text)) = obj.get(key)
                && let Ok(parsed) = serde_json::from_str::<serde_json::Value>(text)
            {
                obj.insert(key.to_string(), parsed);
            }
        }
    }
    v
}

/// A job: state, attempts, progress, result or error, timestamps. With
/// `?wait=30s` the answer comes as soon as the job ends (or when the wait
/// is over, with the job as it is then).
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the job", body = Object),
        (status = 404, description = "unknown job (or its result expired)", body = ErrorBody),
    ))]
async fn get_job(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let job = match &q.wait {
        None => ctx.broker.get(id).await?,
        Some(w) => {
            let wait = parse_duration(w).ok_or_else(|| {
                ApiError::bad_request(format!("wait: {w:?} is not a duration like \"30s\""))
            })?;
            ctx.broker.wait(id, wait.min(MAX_WAIT)).await?
        }
    };
    let job = job.ok_or_else(|| ApiError::not_found(format!("unknown job {id}")))?;
    Ok(axum::Json(job_view(&job)))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RevokeRequest {
    /// Also stop the job if it is running.
    pub terminate: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RevokeAnswer {
    pub id: String,
    /// `revoked`, `terminating`, `will_not_retry`, or `already_final`.
    pub outcome: String,
    /// The final state, for `already_final`.
    pub state: Option<String>,
}

/// Revokes a job: a waiting job never runs; with `terminate` a running
/// one is stopped; without, it finishes but is not retried.
#[utoipa::path(post, path = "/v1/jobs/{id}/revoke", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    request_body = RevokeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "done", body = RevokeAnswer),
        (status = 404, description = "unknown job", body = ErrorBody),
    ))]
async fn revoke_job(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<axum::Json<RevokeAnswer>, ApiError> {
    let id = parse_id(&id)?;
    let (outcome, state) = match ctx.broker.revoke(id, req.terminate).await? {
        RevokeOutcome::Revoked => ("revoked", None),
        RevokeOutcome::Terminating => ("terminating", None),
        RevokeOutcome::WillNotRetry => ("will_not_retry", None),
        RevokeOutcome::AlreadyFinal(s) => (
            "already_final",
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string)),
        ),
        RevokeOutcome::NotFound => return Err(ApiError::not_found(format!("unknown job {id}"))),
    };
    Ok(axum::Json(RevokeAnswer {
        id: id.to_string(),
        outcome: outcome.into(),
        state,
    }))
}

/// The job's state changes and progress as server-sent events, pushed as
/// they happen: first `state` with the job as it is, then `state` and
/// `progress` events; the stream ends after the final state.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "unknown job", body = ErrorBody),
    ))]
async fn job_events(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&id)?;
    // Subscribe first, then read: nothing between the two is missed.
    let rx = ctx.broker.subscribe().await?;
    let job = ctx
        .broker
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown job {id}")))?;
    let first = state_event(&job);
    let state = EventsState {
        first: Some(first),
        done: job.state.is_final(),
        rx,
        id,
        ctx: ctx.clone(),
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if let Some(first) = st.first.take() {
            return Some((Ok(first), st));
        }
        if st.done {
            return None;
        }
        loop {
            match st.rx.recv().await {
                Ok(ev) if ev.id == st.id => {
                    st.done = ev.state.is_final();
                    if st.done
                        && let Ok(Some(job)) = st.ctx.broker.get(st.id).await
                    {
                        // The final event carries the whole record (result or error).
                        return Some((Ok(state_event(&job)), st));
                    }
                    return Some((Ok(event_of(&ev)), st));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: send the job as it is now.
                    let job = st.ctx.broker.get(st.id).await.ok().flatten()?;
                    st.done = job.state.is_final();
                    return Some((Ok(state_event(&job)), st));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(super::sse(&ctx, stream))
}

/// A `state` event: the job as it is now.
fn state_event(job: &Job) -> Event {
    Event::default()
        .event("state")
        .json_data(job_view(job))
        .unwrap_or_default()
}

struct EventsState {
    first: Option<Event>,
    done: bool,
    rx: broadcast::Receiver<JobEvent>,
    id: JobId,
    ctx: AppState,
}

fn event_of(ev: &JobEvent) -> Event {
    let name = if ev.progress.is_some() && !ev.state.is_final() {
        "progress"
    } else {
        "state"
    };
    Event::default()
        .event(name)
        .json_data(ev)
        .unwrap_or_default()
}
