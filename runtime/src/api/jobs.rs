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
use super::error::ErrorBody;
use super::schema::{NeedsAdmin, NeedsToken, QueueName, QueueOrPartition, TakesBody, UsesStorage};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::json_object::{objects_at_most, optional_object};
use crate::names::{ModuleHash, TaskName};
use crate::producer::parse_duration;
use crate::producer::{Caller, EnqueueRequest};
use crate::queue::list::{LIST_MAX, parse_cursor};
use crate::queue::partition::Partitions;
use crate::queue::{
    Enqueued, Job, JobEvent, JobId, JobLimits, JobQuery, JobState, PurgeFilter, RetryPolicy,
    RevokeOutcome,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enqueue, list_jobs))
        .routes(routes!(enqueue_batch))
        .routes(routes!(get_job))
        .routes(routes!(revoke_job))
        .routes(routes!(revoke_many))
        .routes(routes!(job_events))
}

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// A job to enqueue. `task` (or `module`) and `input` are what most
/// callers send; the rest overrides the task binding's defaults. A number
/// above its maximum is refused (400, naming the field) whoever sends it;
/// a submit token may only lower the binding's limits and retries, and
/// may not set `module`, `rate_limit` or an unconfigured `queue` (403).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct JobRequest {
    /// The task to run (bound with `PUT /v1/tasks/{name}`).
    #[schema(value_type = Option<TaskName>)]
    pub task: Option<String>,
    /// Run this uploaded module with no task name (admin tokens only).
    #[schema(value_type = Option<ModuleHash>)]
    pub module: Option<String>,
    /// Any JSON value (`null` too); `{}` when absent.
    #[schema(value_type = Value)]
    #[serde(deserialize_with = "present")]
    pub input: Option<serde_json::Value>,
    /// The task binding's queue when absent.
    #[schema(value_type = Option<QueueName>)]
    pub queue: Option<String>,
    /// Seconds before the job may run: 0 to 100 years.
    #[schema(minimum = 0, maximum = 3_155_760_000_u64)]
    pub countdown: Option<f64>,
    /// When the job may run (RFC 3339), at most 100 years from now (not
    /// with `countdown`).
    pub eta: Option<DateTime<Utc>>,
    /// Drop the job unrun after this many seconds: more than 0, at most 100 years.
    #[schema(exclusive_minimum = 0, maximum = 3_155_760_000_u64)]
    pub expires_in: Option<f64>,
    /// Drop the job unrun at this time (RFC 3339): in the future, at most
    /// 100 years from now (not with `expires_in`).
    pub expires: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "optional_object")]
    pub retry: Option<RetryPolicy>,
    #[serde(deserialize_with = "optional_object")]
    pub limits: Option<JobLimits>,
    /// `N/period` (`10/m`, `5/2s`, `100/h`; units ms, s, m, h, d; at most
    /// 366 days), N at least 1: at most N starts of this task per period
    /// (admin tokens only).
    #[schema(pattern = "^\\s*[0-9]+\\s*/\\s*[0-9]*(ms|s|sec|m|min|h|d)\\s*$")]
    pub rate_limit: Option<String>,
    /// A second request with the same key for the same queue returns the
    /// first job instead, while that job's record is kept (until its
    /// `result_ttl` after it ends: an hour by default) and for at most 24
    /// hours; after that the key starts a new job. 1 to 200 bytes (UTF-8);
    /// keys starting with `beat:` or `child:` are the runner's own and
    /// refused.
    #[schema(min_length = 1, max_length = 200, pattern = "^(?!beat:|child:)")]
    pub idempotency_key: Option<String>,
    /// Seconds the result is kept: at most 100 years.
    #[schema(maximum = 3_155_760_000_u64)]
    pub result_ttl: Option<u64>,
    /// Store no result: the job's state is kept (for `result_ttl`), its
    /// output is not. The task binding's choice when absent.
    pub ignore_result: Option<bool>,
    /// 0 to 9: within its queue a ready job of higher priority is leased
    /// before every job of lower priority. The task binding's (default 0)
    /// when absent.
    #[schema(maximum = 9)]
    pub priority: Option<u64>,
}

/// A field that is there, whatever its value: `null` too, which serde
/// would read as absent into an `Option`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
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
            ignore_result: self.ignore_result,
            priority: self.priority,
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
    #[schema(value_type = JobId)]
    pub id: String,
    /// `PENDING`, or the state of the earlier job with the same idempotency key.
    #[schema(value_type = JobState)]
    pub state: String,
    /// The queue, or the partition of a partitioned queue, the job is in.
    #[schema(value_type = QueueOrPartition)]
    pub queue: String,
    #[schema(value_type = Option<TaskName>)]
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

/// The most jobs one batch holds.
pub const MAX_BATCH: usize = 10_000;

/// Jobs to enqueue together: all of them, or none if one is refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 10,000 jobs.
    #[schema(min_items = 1, max_items = 10_000)]
    #[serde(deserialize_with = "batch_jobs")]
    pub jobs: Vec<JobRequest>,
}

/// A batch's jobs, refused while it is read once it holds too many (a
/// long list of small objects takes far more memory than its body).
fn batch_jobs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<JobRequest>, D::Error> {
    objects_at_most(d, MAX_BATCH)
}

#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    pub jobs: Vec<Accepted>,
}

/// Enqueues a job: `202 Accepted` with its id (and `Location`).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = JobRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "enqueued (or the earlier job with the same idempotency key)", body = Accepted,
            headers(("Location" = String, description = "`/v1/jobs/{id}`"))),
        (status = 400, description = "malformed JSON, or an invalid field (named in the message): a number above its maximum, a bad name, date or key", body = ErrorBody),
        (status = 403, description = "a submit token asked for what only an admin may (a rate limit, a module, an unconfigured queue, higher limits or more retries than the task's)", body = ErrorBody),
        (status = 404, description = "unknown task or module", body = ErrorBody),
        NeedsToken, TakesBody, UsesStorage,
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

/// Enqueues many jobs at once; nothing is stored if one is invalid. On
/// Redis a batch is stored in calls of up to 1,000 jobs per queue (or
/// partition): a storage error part way (a 5xx) leaves the calls before it
/// stored, so a batch to be sent again needs idempotency keys.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "enqueued, in the order given", body = BatchAccepted),
        (status = 400, description = "malformed JSON, an empty batch or one of more than 10,000 jobs, or an invalid job (named by its index and field)", body = ErrorBody),
        (status = 403, description = "a job asks for what only an admin may (named by its index)", body = ErrorBody),
        (status = 404, description = "unknown task or module", body = ErrorBody),
        NeedsToken, TakesBody, UsesStorage,
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
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Long-poll: answer as soon as the job ends, or after this long
    /// (`30s`, `500ms`, seconds; at most 300 s).
    pub wait: Option<String>,
}

/// Filters of `GET /v1/jobs`.
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this queue (all its partitions when it is partitioned) or
    /// partition (default: every queue).
    #[param(value_type = Option<QueueOrPartition>)]
    pub queue: Option<String>,
    /// Only this task's jobs.
    #[param(value_type = Option<TaskName>)]
    pub task: Option<String>,
    /// Only jobs in this state, as a lookup shows it now (any case).
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    /// Created at or after: an RFC 3339 time, or a duration ago (`1h`).
    pub since: Option<String>,
    /// Created before: an RFC 3339 time, or a duration ago.
    pub until: Option<String>,
    /// Only children of this job.
    #[param(value_type = Option<uuid::Uuid>)]
    pub parent: Option<String>,
    /// Only jobs this beat enqueued.
    pub beat: Option<String>,
    /// At most this many jobs (default 50, at most 500).
    #[param(value_type = Option<usize>)]
    pub limit: Option<String>,
    /// Continue where a page ended (its `next`).
    pub cursor: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
pub struct JobList {
    #[schema(value_type = Vec<Job>)]
    pub jobs: Vec<serde_json::Value>,
    /// The `cursor` of the next page; absent when nothing older is left.
    /// A page may hold fewer than `limit` jobs (even none) and still have
    /// a next one: filters on the task, parent, beat, or a state other
    /// than FAILURE, REVOKED and EXPIRED look at 1000 jobs per page.
    #[schema(value_type = Option<uuid::Uuid>)]
    pub next: Option<String>,
}

/// A time in a query: RFC 3339, or a duration before `now`.
fn query_time(field: &str, v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    parse_duration(v)
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field}: {v:?} is neither an RFC 3339 time nor a duration like \"1h\""
            ))
        })
}

impl ListQuery {
    /// The query asked for; a partitioned queue is all its partitions.
    fn query(self, now: DateTime<Utc>, partitions: &Partitions) -> Result<JobQuery, ApiError> {
        if let Some(q) = &self.queue {
            super::queues::check_queue(q)?;
        }
        let time = |field: &str, v: &Option<String>| {
            v.as_deref().map(|v| query_time(field, v, now)).transpose()
        };
        let limit = match &self.limit {
            None => 50,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=LIST_MAX).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "limit: {l:?} is not a number from 1 to {LIST_MAX}"
                    ))
                })?,
        };
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                ApiError::bad_request(format!("cursor: {c:?} is not a page's `next`"))
            })?),
        };
        Ok(JobQuery {
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            parent: match &self.parent {
                None => None,
                Some(p) => Some(p.parse().map_err(|_| {
                    ApiError::bad_request(format!("parent: {p:?} is not a job id"))
                })?),
            },
            state: match &self.state {
                None => None,
                Some(st) => Some(st.to_ascii_uppercase().parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "state: {st:?} is not one of PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, EXPIRED"
                    ))
                })?),
            },
            queues: self
                .queue
                .map(|q| partitions.names(&q))
                .unwrap_or_default(),
            task: self.task,
            beat: self.beat,
            limit,
            cursor,
        })
    }
}

/// Finds jobs: newest first, filtered, a page at a time (pass `next` as
/// `cursor` for the next page). Served from an index of each queue kept by
/// the calls that store and end jobs; a job is listed until its record
/// expires.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "a page of jobs", body = JobList),
        (status = 400, description = "a bad filter (named): queue name, state, time, id, limit or cursor", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn list_jobs(
    State(ctx): State<AppState>,
    _: Submit,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<axum::Json<JobList>, ApiError> {
    let query = q.query(Utc::now(), ctx.producer.partitions())?;
    let page = ctx.broker.list(&query).await?;
    Ok(axum::Json(JobList {
        jobs: page.jobs.iter().map(job_view).collect(),
        next: page.next.map(|id| id.to_string()),
    }))
}

/// A duration in a query (`field=value`): `30s`, `500ms`, seconds; a 400
/// naming the field, with `example`, otherwise.
pub(super) fn duration_param(
    field: &str,
    value: &str,
    example: &str,
) -> Result<Duration, ApiError> {
    parse_duration(value).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{field}: {value:?} is not a duration like \"{example}\""
        ))
    })
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
    params(("id" = uuid::Uuid, Path, description = "job id"), WaitQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the job", body = Job),
        (status = 400, description = "not a job id, or a bad `wait`", body = ErrorBody),
        (status = 404, description = "unknown job (or its result expired)", body = ErrorBody),
        NeedsToken, UsesStorage,
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
            let wait = duration_param("wait", w, "30s")?;
            super::unless_closing(
                &ctx,
                ctx.broker.wait(id, wait.min(MAX_WAIT)),
                ctx.broker.get(id),
            )
            .await?
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

/// What a revoke did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeOutcomeName {
    /// It was waiting and will never run.
    Revoked,
    /// It is running; its worker was told to stop it.
    Terminating,
    /// It is running and will finish, but will not be retried.
    WillNotRetry,
    /// It had ended already (`state` says how).
    AlreadyFinal,
}

#[derive(Serialize, ToSchema)]
pub struct RevokeAnswer {
    #[schema(value_type = JobId)]
    pub id: String,
    pub outcome: RevokeOutcomeName,
    /// The final state, for `already_final`.
    pub state: Option<JobState>,
}

/// Revokes a job: a waiting job never runs; with `terminate` a running
/// one is stopped; without, it finishes but is not retried.
#[utoipa::path(post, path = "/v1/jobs/{id}/revoke", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    request_body = RevokeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "done", body = RevokeAnswer),
        (status = 400, description = "not a job id, or a malformed body", body = ErrorBody),
        (status = 404, description = "unknown job", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn revoke_job(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<axum::Json<RevokeAnswer>, ApiError> {
    let id = parse_id(&id)?;
    let outcome = ctx.broker.revoke(id, req.terminate).await?;
    if outcome == RevokeOutcome::Revoked
        && let Some(job) = ctx.broker.get(id).await?
        && job.workflow.is_some()
    {
        // A workflow member ended: its workflow learns it now.
        crate::workflow::Workflows::new(ctx.producer.clone())
            .apply_ended(&[(job.queue.clone(), job)])
            .await?;
    }
    revoke_answer(id, outcome)
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("unknown job {id}")))
}

/// The answer for a revoke of `id`; None if it found no such job.
fn revoke_answer(id: JobId, outcome: RevokeOutcome) -> Option<RevokeAnswer> {
    let (outcome, state) = match outcome {
        RevokeOutcome::NotFound => return None,
        RevokeOutcome::Revoked => (RevokeOutcomeName::Revoked, None),
        RevokeOutcome::Terminating => (RevokeOutcomeName::Terminating, None),
        RevokeOutcome::WillNotRetry => (RevokeOutcomeName::WillNotRetry, None),
        RevokeOutcome::AlreadyFinal(s) => (RevokeOutcomeName::AlreadyFinal, Some(s)),
    };
    Some(RevokeAnswer {
        id: id.to_string(),
        outcome,
        state,
    })
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RevokeManyRequest {
    /// Every job of this task.
    pub task: Option<String>,
    /// Every job of this queue (with `task`: that task's jobs in it; every
    /// known queue when absent).
    pub queue: Option<String>,
    /// Also stop those running.
    pub terminate: bool,
    /// List what would be revoked; change nothing.
    pub dry_run: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RevokedMany {
    /// Waiting jobs (ready, delayed, waiting for a retry): ended REVOKED,
    /// they never run.
    #[schema(value_type = Vec<JobId>)]
    pub purged: Vec<String>,
    /// Running jobs: told to stop (`terminating`) or, without `terminate`,
    /// to finish without a retry (`will_not_retry`).
    pub running: Vec<RevokeAnswer>,
    pub dry_run: bool,
}

/// Revokes every job of a task and/or a queue, queue by queue: the
/// waiting ones, then the running ones, then those waiting again (a run
/// that ended with a retry meanwhile). A job leased while this goes on is
/// found by the next step. The reply lists each.
#[utoipa::path(post, path = "/v1/jobs/revoke", tag = "jobs",
    request_body = RevokeManyRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "done", body = RevokedMany),
        (status = 400, description = "neither a task nor a queue, a bad name, or a malformed body", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn revoke_many(
    State(ctx): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<RevokeManyRequest>,
) -> Result<axum::Json<RevokedMany>, ApiError> {
    if req.task.is_none() && req.queue.is_none() {
        return Err(ApiError::bad_request(
            "name a task, a queue or both: revoking every job of every queue is not offered",
        ));
    }
    let filter = PurgeFilter {
        task: req.task.clone(),
        dry_run: req.dry_run,
        ..Default::default()
    };
    super::queues::check_filter(&filter)?;
    let queues = match &req.queue {
        Some(q) => {
            super::queues::check_queue(q)?;
            ctx.producer.partitions().names(q)
        }
        None => ctx
            .broker
            .queues()
            .await?
            .into_iter()
            .map(|q| q.name)
            .collect(),
    };
    let mut out = RevokedMany {
        purged: Vec::new(),
        running: Vec::new(),
        dry_run: req.dry_run,
    };
    for queue in &queues {
        // Waiting jobs first, then running ones, then waiting ones again:
        // a job leased between two steps is found by the next, and a
        // running one that ended with a retry before it was revoked is
        // found by the last. (Running first would miss a job leased
        // between the read of the running and the purge.)
        out.purged.extend(
            super::queues::purge_one(&ctx, queue, &filter)
                .await?
                .iter()
                .map(|i| i.to_string()),
        );
        for job in ctx.broker.running(queue).await? {
            if !filter.of_task(&job) {
                continue;
            }
            let outcome = if req.dry_run && req.terminate {
                RevokeOutcome::Terminating
            } else if req.dry_run {
                RevokeOutcome::WillNotRetry
            } else {
                ctx.broker.revoke(job.id, req.terminate).await?
            };
            // (Gone meanwhile: its record expired. Nothing to list.)
            out.running.extend(revoke_answer(job.id, outcome));
        }
        if !req.dry_run {
            out.purged.extend(
                super::queues::purge_one(&ctx, queue, &filter)
                    .await?
                    .iter()
                    .map(|i| i.to_string()),
            );
        }
    }
    if !req.dry_run {
        tracing::info!(
            task = ?req.task,
            queue = ?req.queue,
            purged = out.purged.len(),
            running = out.running.len(),
            "revoked in bulk"
        );
    }
    Ok(axum::Json(out))
}

/// The job's state changes and progress as server-sent events, pushed as
/// they happen: first `state` with the job as it is, then `state` and
/// `progress` events; the stream ends after the final state (a job that
/// expires while it waits ends EXPIRED at its expiry).
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "job id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "an event stream: `state` events carry the job (a `Job`), `progress` events a `JobEvent`",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "not a job id", body = ErrorBody),
        (status = 404, description = "unknown job", body = ErrorBody),
        NeedsToken, UsesStorage,
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
        expiry: crate::queue::expiry_wake(&job),
        retry: None,
        missed: false,
        rx,
        id,
        ctx: ctx.clone(),
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if let Some(first) = st.first.take() {
            return Some((Ok(first), st));
        }
        loop {
            if st.done {
                return None;
            }
            let wake = [st.expiry, st.retry].into_iter().flatten().min();
            let heard = match wake {
                Some(at) => tokio::time::timeout_at(at, st.rx.recv()).await.ok(),
                None => Some(st.rx.recv().await),
            };
            match heard {
                // Its expiry passed, or a read failed: read again.
                None => {
                    let now = tokio::time::Instant::now();
                    st.expiry = st.expiry.filter(|at| *at > now);
                    st.retry = st.retry.filter(|at| *at > now);
                }
                Some(Ok(ev)) if ev.id == st.id => {
                    st.done = ev.state.is_final();
                    if st.done
                        && let Ok(Some(job)) = st.ctx.broker.get(st.id).await
                    {
                        // The final event carries the whole record (result or error).
                        return Some((Ok(state_event(&job)), st));
                    }
                    return Some((Ok(event_of(&ev)), st));
                }
                Some(Ok(ev)) if !ev.is_gap() => continue,
                // Missed some: send the job as it is now.
                Some(Ok(_)) | Some(Err(broadcast::error::RecvError::Lagged(_))) => st.missed = true,
                Some(Err(broadcast::error::RecvError::Closed)) => return None,
            }
            match st.read_again().await {
                Reread::Send(ev) => return Some((Ok(ev), st)),
                Reread::Nothing => {}
                Reread::Gone => return None,
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
    /// When its expiry passes (a job still waiting then is shown EXPIRED,
    /// and no event says so): read it again then, once.
    expiry: Option<tokio::time::Instant>,
    /// A read failed: try again then.
    retry: Option<tokio::time::Instant>,
    /// Events may have been missed and the job was not read since: the
    /// next read is sent whatever it shows.
    missed: bool,
    rx: broadcast::Receiver<JobEvent>,
    id: JobId,
    ctx: AppState,
}

/// How long a job's event stream waits to read the job again after a read
/// failed (the broker restarting, say).
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// What [`EventsState::read_again`] found.
enum Reread {
    /// Send this `state` event.
    Send(Event),
    /// Nothing to send (yet): keep listening.
    Nothing,
    /// The record is gone: end the stream.
    Gone,
}

impl EventsState {
    /// Reads the job again (events may have been missed, or its expiry
    /// passed). A read that fails is logged and tried again a little later
    /// (or at the next gap): the stream is kept, as a workflow's is.
    async fn read_again(&mut self) -> Reread {
        match self.ctx.broker.get(self.id).await {
            Ok(Some(job)) => {
                self.done = job.state.is_final();
                self.retry = None;
                let missed = std::mem::take(&mut self.missed);
                if self.done || missed {
                    Reread::Send(state_event(&job))
                } else {
                    // Not final at its expiry: leased (its worker's settle
                    // sends the end). The expiry is not waited for again.
                    Reread::Nothing
                }
            }
            Ok(None) => Reread::Gone,
            Err(e) => {
                tracing::warn!(job = %self.id, error = %e, "reading a job for its events");
                self.retry = tokio::time::Instant::now().checked_add(REREAD_AFTER);
                Reread::Nothing
            }
        }
    }
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
