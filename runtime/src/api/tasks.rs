//! `/v1/tasks`: task names bound to modules, with defaults and grants.
//! Re-binding deploys at once (new jobs take the new module; running ones
//! finish on theirs); every earlier binding is kept, so a rollback is one
//! call.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Admin, Submit};
use super::error::ErrorBody;
use super::schema::{NeedsAdmin, NeedsToken, QueueName, TakesBody, UsesStorage};
use super::{ApiError, ApiJson, ApiPath, AppState};
use crate::config::{ModuleSource, TaskSpec, parse_module_source};
use crate::deploy;
use crate::json_object::{object, optional_object};
use crate::queue::RetryPolicy;
use crate::registry::{ModuleHash, TaskBinding, TaskGrants, TaskName};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks))
        .routes(routes!(put_task, get_task))
        .routes(routes!(rollback_task))
}

/// A binding: the module a task name runs, its defaults and its grants.
/// Everything but `module` is optional.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// `sha256:<hex>` of an uploaded module, or `builtin:<name>`.
    #[schema(pattern = "^(sha256:[0-9a-f]{64}|builtin:.+)$")]
    pub module: String,
    /// Default queue (`default`).
    #[schema(value_type = Option<QueueName>)]
    pub queue: Option<String>,
    /// `30/m`: global limit on starts of this task (`N/period`, units ms,
    /// s, m, h, d; at most 366 days).
    #[schema(pattern = "^\\s*[0-9]+\\s*/\\s*[0-9]*(ms|s|sec|m|min|h|d)\\s*$")]
    pub rate_limit: Option<String>,
    /// `60s` style wall-clock limit per run: at most a day.
    pub time_limit: Option<String>,
    /// `50s` style: after it, the task's capability calls are denied
    /// ("soft time limit", the SDK's `HostError::TimeUp`) so that it
    /// finishes up before `time_limit`.
    pub soft_time_limit: Option<String>,
    /// Fuel per run.
    #[schema(maximum = 1_000_000_000_000_000_u64)]
    pub fuel: Option<u64>,
    /// `64MiB` style memory limit: at most 4 GiB.
    pub memory: Option<String>,
    #[serde(default, deserialize_with = "optional_object")]
    pub retry: Option<RetryPolicy>,
    /// `1h` style: how long results are kept, at most 100 years.
    pub result_ttl: Option<String>,
    /// Its jobs store no result (their state is kept for `result_ttl`),
    /// unless a job asks otherwise. Default false.
    pub ignore_result: Option<bool>,
    /// The priority of its jobs that set none: 0 (default) to 9, higher
    /// first.
    #[schema(maximum = 9)]
    pub priority: Option<u64>,
    /// What the task may reach: `kv`, `mail`, `http`, `pdf`, `files`, `jobs`
    /// (the format of `[tasks.NAME.grants]` in runner.toml). None when absent.
    #[serde(default, deserialize_with = "object")]
    pub grants: TaskGrants,
}

/// A task name's binding and its earlier bindings, newest first.
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    pub binding: TaskBinding,
    /// Earlier bindings, newest first (the current one included once it
    /// was replaced).
    pub history: Vec<TaskBinding>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Bind this earlier module (`sha256:<hex>`). When absent (and no
    /// `bound_at`): the newest binding of a module other than the current
    /// one, so re-binds that changed only settings are passed over; name
    /// such a binding with `bound_at`.
    #[schema(value_type = Option<ModuleHash>)]
    pub to: Option<String>,
    /// The earlier binding made at this time (its `bound_at`, as the
    /// history lists it): says which one when the history holds several
    /// of one module (re-bound with other settings).
    pub bound_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Binds (or re-binds) a task name. Refused (422, naming the import) when
/// the module imports a capability the grants do not allow.
#[utoipa::path(put, path = "/v1/tasks/{name}", tag = "tasks",
    params(("name" = TaskName, Path, description = "task name")),
    request_body = BindRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "bound", body = TaskView),
        (status = 400, description = "malformed JSON or an invalid field (named in the message)", body = ErrorBody),
        (status = 404, description = "unknown module", body = ErrorBody),
        (status = 422, description = "refused: a bad task name, bad grants, or grants that do not cover the module's imports", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn put_task(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<BindRequest>,
) -> Result<axum::Json<TaskView>, ApiError> {
    // A built-in is stored only once its binding is accepted.
    let (module, builtin) = match parse_module_source(&req.module)
        .map_err(|e| ApiError::bad_request(format!("module: {e:#}")))?
    {
        ModuleSource::Hash(h) => (h, None),
        ModuleSource::Builtin(b) => {
            let bytes = crate::builtin::module(&b)
                .ok_or_else(|| ApiError::bad_request(format!("module: no built-in {b}")))?;
            (ModuleHash::of(bytes), Some(bytes.to_vec()))
        }
        ModuleSource::Path(_) => {
            return Err(ApiError::bad_request(format!(
                "module: {:?} is neither sha256:<hex> nor builtin:<name>; upload the component first (POST /v1/modules)",
                req.module
            )));
        }
    };
    let spec = TaskSpec {
        module: None,
        queue: req.queue,
        rate_limit: req.rate_limit,
        time_limit: req.time_limit,
        soft_time_limit: req.soft_time_limit,
        fuel: req.fuel,
        memory: req.memory,
        retry: req.retry,
        result_ttl: req.result_ttl,
        ignore_result: req.ignore_result,
        priority: req.priority,
        grants: req.grants,
    };
    let binding = spec
        .defaults(&name, &module)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let binding = match builtin {
        Some(bytes) => deploy::upload_and_bind(&ctx.sandbox, &ctx.registry, bytes, binding).await?,
        None => deploy::bind(&ctx.sandbox, &ctx.registry, binding).await?,
    };
    let history = ctx.registry.history(&name).await?;
    Ok(axum::Json(TaskView { binding, history }))
}

/// A task name's binding and its history.
#[utoipa::path(get, path = "/v1/tasks/{name}", tag = "tasks",
    params(("name" = TaskName, Path, description = "task name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the binding", body = TaskView),
        (status = 400, description = "the name is not UTF-8", body = ErrorBody),
        (status = 404, description = "unknown task", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn get_task(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<TaskView>, ApiError> {
    let binding = ctx
        .registry
        .task(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown task {name:?}")))?;
    let history = ctx.registry.history(&name).await?;
    Ok(axum::Json(TaskView { binding, history }))
}

/// Every task name with its current binding.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", security(("bearer" = [])),
    responses(
        (status = 200, description = "bindings", body = Vec<TaskBinding>),
        NeedsToken, UsesStorage,
    ))]
async fn list_tasks(
    State(ctx): State<AppState>,
    _: Submit,
) -> Result<axum::Json<Vec<TaskBinding>>, ApiError> {
    Ok(axum::Json(ctx.registry.tasks().await?))
}

/// Binds the previous module again (or the one named in `to`), with the
/// defaults and grants it had then.
#[utoipa::path(post, path = "/v1/tasks/{name}/rollback", tag = "tasks",
    params(("name" = TaskName, Path, description = "task name")),
    request_body = RollbackRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "rolled back", body = TaskView),
        (status = 400, description = "malformed JSON or a malformed `to`", body = ErrorBody),
        (status = 404, description = "unknown task, or no such earlier binding (or its module is gone)", body = ErrorBody),
        (status = 422, description = "the earlier binding is refused now (its grants no longer pass)", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn rollback_task(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<axum::Json<TaskView>, ApiError> {
    let current = ctx
        .registry
        .task(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown task {name:?}")))?;
    let history = ctx.registry.history(&name).await?;
    let at = |b: &&crate::registry::TaskBinding| req.bound_at.is_none_or(|t| b.bound_at == t);
    let target = match &req.to {
        None if req.bound_at.is_some() => history.iter().find(at),
        None => history.iter().find(|b| b.module != current.module),
        Some(to) => {
            let to = crate::registry::ModuleHash::parse_lenient(to).map_err(|e| {
                ApiError::bad_request(format!("to: {to:?} is not sha256:<64 hex digits>: {e}"))
            })?;
            history.iter().filter(at).find(|b| b.module == to)
        }
    }
    .cloned()
    .ok_or_else(|| {
        ApiError::not_found(match (&req.to, req.bound_at) {
            (None, None) => format!(
                "task {name:?} has no earlier module to roll back to \
                 (name an earlier binding of this module with bound_at)"
            ),
            _ => format!("task {name:?} has no such earlier binding to roll back to"),
        })
    })?;
    let mut binding = target;
    binding.bound_at = chrono::Utc::now();
    let binding = deploy::bind(&ctx.sandbox, &ctx.registry, binding).await?;
    let history = ctx.registry.history(&name).await?;
    Ok(axum::Json(TaskView { binding, history }))
}
