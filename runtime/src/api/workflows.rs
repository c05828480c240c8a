//! `/v1/workflows`: start a workflow (chain, group, chord), read it with
//! a long poll, follow it as server-sent events, revoke it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Admin, Role, Submit};
use super::error::ErrorBody;
use super::schema::{NeedsAdmin, NeedsToken, TakesBody, UsesStorage};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::producer::Caller;
use crate::queue::{Broker, Heard, JobId, WfState};
use crate::workflow::{Submitted, WorkflowError, WorkflowRequest, WorkflowStatus, Workflows};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit))
        .routes(routes!(get_workflow))
        .routes(routes!(workflow_events))
        .routes(routes!(revoke_workflow))
}

const MAX_WAIT: Duration = Duration::from_secs(300);

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::Invalid { .. } => ApiError::bad_request(e.to_string()),
            WorkflowError::Step { path, source } => {
                let inner = ApiError::from(*source);
                // An unknown task or module deep in a tree is a bad tree.
                let (status, code) = if inner.status == StatusCode::NOT_FOUND {
                    (StatusCode::BAD_REQUEST, "bad_request")
                } else {
                    (inner.status, inner.code)
                };
                ApiError::new(status, code, format!("{path}: {}", inner.message))
            }
            WorkflowError::Enqueue(e) => e.into(),
            WorkflowError::Broker(e) => e.into(),
        }
    }
}

fn workflows(ctx: &AppState) -> Workflows {
    Workflows::new(ctx.producer.clone())
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid workflow id {id:?}: expected a UUID")))
}

/// Starts a workflow: the whole tree is checked first (every task name,
/// input and option, the sizes), and one bad step refuses it with a 400
/// that names the step's path (`workflow.chain[2].group[0]`); nothing is
/// enqueued then. Its first steps are enqueued at once.
#[utoipa::path(post, path = "/v1/workflows", tag = "workflows", request_body = WorkflowRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "started (or, for a known idempotency key, the workflow it started)", body = Submitted,
            headers(("Location" = String, description = "`/v1/workflows/{id}`"))),
        (status = 400, description = "a bad step (its path named): an empty chain, group or chord, nesting deeper than 32, more than 10,000 jobs, an unknown task, an invalid option", body = ErrorBody),
        (status = 403, description = "a step asks for what only an admin may", body = ErrorBody),
        NeedsToken, TakesBody, UsesStorage,
    ))]
async fn submit(
    State(ctx): State<AppState>,
    Submit(role): Submit,
    ApiJson(req): ApiJson<WorkflowRequest>,
) -> Result<Response, ApiError> {
    let caller = match role {
        Role::Admin => Caller::Admin,
        Role::Submit => Caller::Submitter,
    };
    let done = workflows(&ctx).submit(caller, &req).await?;
    let location = format!("/v1/workflows/{}", done.id);
    let mut res = (StatusCode::ACCEPTED, axum::Json(done)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Answer as soon as the workflow ends, or after this long (`30s`,
    /// `2m`; at most 5 minutes).
    pub wait: Option<String>,
}

/// A workflow: state, counts, each step's state, and once it succeeded
/// its result. With `?wait=30s` the answer comes as soon as it ends.
#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "workflow id"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the workflow", body = WorkflowStatus),
        (status = 400, description = "not a workflow id, or a bad `wait`", body = ErrorBody),
        (status = 404, description = "unknown workflow (or its record expired)", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn get_workflow(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<axum::Json<WorkflowStatus>, ApiError> {
    let id = parse_id(&id)?;
    let wf = workflows(&ctx);
    let status = match &q.wait {
        None => wf.status(id).await?,
        Some(w) => {
            let wait = super::jobs::duration_param("wait", w, "30s")?.min(MAX_WAIT);
            super::unless_closing(
                &ctx,
                wait_for_end(ctx.broker.as_ref(), &wf, id, wait),
                async { Ok(wf.status(id).await?) },
            )
            .await?
        }
    };
    status
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("unknown workflow {id}")))
}

/// Reads workflow `id` until it ended or `wait` passed, woken by its
/// events (nothing polls).
async fn wait_for_end(
    broker: &dyn Broker,
    wf: &Workflows,
    id: JobId,
    wait: Duration,
) -> Result<Option<WorkflowStatus>, ApiError> {
    let mut events = broker.subscribe().await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let status = wf.status(id).await?;
        match &status {
            Some(s) if !s.state.is_final() => {}
            _ => return Ok(status),
        }
        match crate::queue::await_end(&mut events, id, deadline).await {
            Heard::TimedOut => return Ok(wf.status(id).await?),
            Heard::Closed => events = broker.subscribe().await?,
            Heard::Ended(_) | Heard::ReadAgain => {}
        }
    }
}

/// A `progress` event of a workflow's stream.
#[derive(Serialize, ToSchema)]
pub struct WorkflowProgress {
    pub id: JobId,
    pub state: WfState,
    pub done: u64,
    pub total: u64,
}

/// A workflow as it moves: a `workflow` event with the whole status
/// first, a `progress` event (`{id, state, done, total}`) each time
/// members end, a `member` event (a job event) each time one of its
/// members changes state, and a last `workflow` event when it ended; then
/// the stream ends. A `lagged` event says events were missed (the status
/// follows).
#[utoipa::path(get, path = "/v1/workflows/{id}/events", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "workflow id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "an event stream of `workflow`, `progress`, `member` and `lagged` events",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "not a workflow id", body = ErrorBody),
        (status = 404, description = "unknown workflow", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn workflow_events(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = parse_id(&id)?;
    let wf = workflows(&ctx);
    // Subscribed before the first read: no end between them is missed.
    let rx = ctx.broker.subscribe().await?;
    let first = wf
        .status(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown workflow {id}")))?;
    // Every job it may run, from the start: steps launched later too.
    let members: std::collections::HashSet<JobId> = wf
        .member_ids(id)
        .await?
        .unwrap_or_default()
        .into_iter()
        .collect();
    let total = first.total;
    let ended = first.state.is_final();
    let first_event = status_event(&first);
    struct S {
        rx: broadcast::Receiver<crate::queue::JobEvent>,
        wf: Workflows,
        members: std::collections::HashSet<JobId>,
        pending: Vec<Event>,
        done: bool,
    }
    let state = S {
        rx,
        wf,
        members,
        pending: vec![first_event],
        done: ended,
    };
    let stream = futures::stream::unfold(state, move |mut s| async move {
        loop {
            if !s.pending.is_empty() {
                let ev = s.pending.remove(0);
                return Some((Ok(ev), s));
            }
            if s.done {
                return None;
            }
            let reread = match s.rx.recv().await {
                Ok(ev) if ev.id == id => {
                    let state = crate::queue::WfState::parse(
                        ev.progress
                            .as_ref()
                            .and_then(|p| p.message.as_deref())
                            .unwrap_or(""),
                    );
                    let done = ev.progress.as_ref().map_or(0, |p| p.done);
                    if let Some(state) = state {
                        s.pending.push(
                            Event::default()
                                .event("progress")
                                .json_data(WorkflowProgress {
                                    id,
                                    state,
                                    done,
                                    total,
                                })
                                .unwrap_or_default(),
                        );
                        state.is_final()
                    } else {
                        false
                    }
                }
                Ok(ev) if ev.is_gap() => {
                    s.pending.push(
                        Event::default()
                            .event("lagged")
                            .json_data(super::events::Lagged { missed: 0 })
                            .unwrap_or_default(),
                    );
                    true
                }
                Ok(ev) => {
                    if s.members.contains(&ev.id) {
                        s.pending.push(
                            Event::default()
                                .event("member")
                                .json_data(&ev)
                                .unwrap_or_default(),
                        );
                    }
                    false
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    s.pending.push(
                        Event::default()
                            .event("lagged")
                            .json_data(super::events::Lagged { missed })
                            .unwrap_or_default(),
                    );
                    true
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if reread {
                match s.wf.status(id).await {
                    Ok(Some(st)) => {
                        s.done = st.state.is_final();
                        s.pending.push(status_event(&st));
                    }
                    Ok(None) => s.done = true,
                    Err(e) => {
                        tracing::warn!(workflow = %id, error = %e, "reading a workflow for its events")
                    }
                }
            }
        }
    });
    Ok(super::sse(&ctx, stream))
}

fn status_event(st: &WorkflowStatus) -> Event {
    Event::default()
        .event("workflow")
        .json_data(st)
        .unwrap_or_default()
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RevokeWorkflow {
    /// Also stop its running jobs (else they finish, and nothing after
    /// them runs).
    pub terminate: bool,
}

#[derive(Deserialize, IntoParams, Default)]
#[serde(default)]
#[serde(deny_unknown_fields)]
pub struct TerminateQuery {
    /// Also stop its running jobs (as `terminate` in the body).
    pub terminate: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkflowRevoked {
    pub id: JobId,
    /// `revoked`, or how it had ended already.
    pub state: WfState,
}

/// Revokes a workflow: steps not started never run; started jobs are
/// revoked (stopped if running and `terminate`). A workflow that ended
/// keeps its end.
#[utoipa::path(post, path = "/v1/workflows/{id}/revoke", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "workflow id"), TerminateQuery),
    request_body = RevokeWorkflow,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "revoked, or the end it had", body = WorkflowRevoked),
        (status = 400, description = "not a workflow id, or a malformed body", body = ErrorBody),
        (status = 404, description = "unknown workflow", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn revoke_workflow(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TerminateQuery>,
    ApiJson(req): ApiJson<RevokeWorkflow>,
) -> Result<axum::Json<WorkflowRevoked>, ApiError> {
    let id = parse_id(&id)?;
    let terminate = q.terminate.unwrap_or(false) || req.terminate;
    let state = workflows(&ctx)
        .revoke(id, terminate)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown workflow {id}")))?;
    Ok(axum::Json(WorkflowRevoked { id, state }))
}
