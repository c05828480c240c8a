//! `/v1/schedules`: beats (cron or interval, in a time zone). Changes reach
//! every running scheduler at once; beats from `runner.toml` are listed
//! too and can be overridden or disabled, not deleted.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Admin, Submit};
use super::error::{ErrorBody, read_body};
use super::jobs::job_view;
use super::schema::{NeedsAdmin, NeedsToken, TakesBody, UsesScheduler};
use super::{ApiError, ApiPath, AppState};
use crate::queue::Job;
use crate::scheduler::beat::{Beat, BeatError};
use crate::scheduler::{BeatStatus, Scheduler};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_schedules))
        .routes(routes!(get_schedule, put_schedule, delete_schedule))
        .routes(routes!(fire_schedule))
        .routes(routes!(enable_schedule))
        .routes(routes!(disable_schedule))
}

impl From<BeatError> for ApiError {
    fn from(e: BeatError) -> Self {
        match e {
            BeatError::NotFound(_) => ApiError::not_found(e.to_string()),
            BeatError::Enqueue(q) => q.into(),
            BeatError::Registry(r) => r.into(),
            BeatError::Store(_) => ApiError::unavailable(e.to_string()),
            BeatError::Conflict(_) => {
                ApiError::new(axum::http::StatusCode::CONFLICT, "conflict", e.to_string())
            }
            e if e.is_bad_input() => ApiError::bad_request(e.to_string()),
            e => ApiError::internal(e.to_string()),
        }
    }
}

fn scheduler(ctx: &AppState) -> Result<&Scheduler, ApiError> {
    ctx.scheduler
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this server has no scheduler configured"))
}

fn status_json(s: &BeatStatus) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

/// Every beat with its status: last fire, next fire (zone and UTC), the
/// last job and its outcome.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", security(("bearer" = [])),
    responses(
        (status = 200, description = "beats", body = Vec<BeatStatus>),
        NeedsToken, UsesScheduler,
    ))]
async fn list_schedules(
    State(ctx): State<AppState>,
    _: Submit,
) -> Result<axum::Json<Vec<serde_json::Value>>, ApiError> {
    let list = scheduler(&ctx)?.list().await?;
    Ok(axum::Json(list.iter().map(status_json).collect()))
}

/// One beat with its status.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "beat name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the beat", body = BeatStatus),
        (status = 400, description = "the name is not UTF-8", body = ErrorBody),
        (status = 404, description = "no such beat", body = ErrorBody),
        NeedsToken, UsesScheduler,
    ))]
async fn get_schedule(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    Ok(axum::Json(status_json(&scheduler(&ctx)?.get(&name).await?)))
}

/// Creates or replaces a beat. A bad cron expression, an unknown time zone
/// or an unknown task is refused (400) with the reason.
#[utoipa::path(put, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "beat name")),
    request_body(content = Beat, description = "The beat; `name` may be left out (the URL's) but must match it if given. \
        `task`, and `cron` (5 or 6 fields, `@daily`...) or `every` (`30s`, `5m`)."),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "stored", body = BeatStatus),
        (status = 400, description = "a bad beat (every problem named by its field), an unknown task, or malformed JSON", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesScheduler,
    ))]
async fn put_schedule(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(name): ApiPath<String>,
    req: axum::extract::Request,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let sched = scheduler(&ctx)?;
    let bytes = read_body(req, ctx.max_body).await?;
    let mut value: serde_json::Value = super::error::parse_json(&bytes)?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("a beat is a JSON object"))?;
    match obj.get("name") {
        Some(serde_json::Value::String(n)) if *n != name => {
            return Err(ApiError::bad_request(format!(
                "name: the body says {n:?} but the URL says {name:?}"
            )));
        }
        Some(serde_json::Value::String(_)) | None => {
            obj.insert("name".into(), serde_json::Value::String(name.clone()));
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "name: expected a string (the URL's {name:?})"
            )));
        }
    }
    // Parsed again from text so that a field of the wrong type is named
    // by its path (`limits.fuel: ...`).
    let beat: Beat = super::error::parse_json(value.to_string().as_bytes())?;
    Ok(axum::Json(status_json(&sched.put(beat).await?)))
}

/// Deletes a beat created through the API (a beat of `runner.toml` comes
/// back if this one overrode it).
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "beat name")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "defined in runner.toml", body = ErrorBody),
        (status = 404, description = "no such beat", body = ErrorBody),
        NeedsAdmin, UsesScheduler,
    ))]
async fn delete_schedule(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    scheduler(&ctx)?.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enqueues the beat's job now (it never replaces a scheduled fire).
#[utoipa::path(post, path = "/v1/schedules/{name}/fire", tag = "schedules",
    params(("name" = String, Path, description = "beat name")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "enqueued", body = Job),
        (status = 400, description = "the beat's job is refused (the message says why)", body = ErrorBody),
        (status = 404, description = "no such beat, or its task is no longer bound", body = ErrorBody),
        NeedsAdmin, UsesScheduler,
    ))]
async fn fire_schedule(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<(StatusCode, axum::Json<serde_json::Value>), ApiError> {
    let job = scheduler(&ctx)?.fire_now(&name).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(job_view(&job))))
}

/// Enables a beat.
#[utoipa::path(post, path = "/v1/schedules/{name}/enable", tag = "schedules",
    params(("name" = String, Path, description = "beat name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "enabled", body = BeatStatus),
        (status = 400, description = "the stored beat no longer validates", body = ErrorBody),
        (status = 404, description = "no such beat", body = ErrorBody),
        (status = 409, description = "the beat kept changing meanwhile: try again", body = ErrorBody),
        NeedsAdmin, UsesScheduler,
    ))]
async fn enable_schedule(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    Ok(axum::Json(status_json(
        &scheduler(&ctx)?.set_enabled(&name, true).await?,
    )))
}

/// Disables a beat without deleting it.
#[utoipa::path(post, path = "/v1/schedules/{name}/disable", tag = "schedules",
    params(("name" = String, Path, description = "beat name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "disabled", body = BeatStatus),
        (status = 400, description = "the stored beat no longer validates", body = ErrorBody),
        (status = 404, description = "no such beat", body = ErrorBody),
        (status = 409, description = "the beat kept changing meanwhile: try again", body = ErrorBody),
        NeedsAdmin, UsesScheduler,
    ))]
async fn disable_schedule(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    Ok(axum::Json(status_json(
        &scheduler(&ctx)?.set_enabled(&name, false).await?,
    )))
}
