//! `/v1/modules`: task components, stored by sha256.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Admin, Submit};
use super::error::{ErrorBody, read_body};
use super::schema::{NeedsAdmin, NeedsToken, TakesBody, UsesStorage, WasmBytes};
use super::{ApiError, ApiPath, AppState};
use crate::deploy;
use crate::registry::{ModuleHash, ModuleInfo};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_module, list_modules))
        .routes(routes!(put_module, get_module))
}

/// A stored module.
#[derive(Serialize, ToSchema)]
pub struct ModuleView {
    /// `sha256:<hex>` of the component bytes.
    #[schema(value_type = ModuleHash)]
    pub hash: String,
    pub size: u64,
    pub uploaded_at: DateTime<Utc>,
    /// Every interface the component imports.
    pub imports: Vec<String>,
    /// The `runner:task` capabilities it needs (what a binding must grant):
    /// `kv`, `mail`, `http`, `pdf`, `files`, `jobs`.
    pub capabilities: Vec<String>,
    /// False when the module was already stored.
    pub created: bool,
}

impl ModuleView {
    fn new(info: ModuleInfo, created: bool) -> Self {
        let capabilities = info
            .imports
            .iter()
            .filter_map(|i| i.strip_prefix("runner:task/"))
            .map(|i| i.split('@').next().unwrap_or(i).to_string())
            .filter(|c| c != "types" && c != "context")
            .collect();
        ModuleView {
            hash: info.hash.to_string(),
            size: info.size,
            uploaded_at: info.uploaded_at,
            imports: info.imports,
            capabilities,
            created,
        }
    }
}

async fn store(
    ctx: &AppState,
    body: Vec<u8>,
) -> Result<(StatusCode, axum::Json<ModuleView>), ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty body: send the component's bytes",
        ));
    }
    let (info, created) = deploy::upload(&ctx.sandbox, &ctx.registry, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(ModuleView::new(info, created))))
}

/// Uploads a component; the server computes its hash. It is validated
/// (a component of the `task` world importing only `runner:task` and WASI
/// interfaces) and compiled before it is stored.
#[utoipa::path(post, path = "/v1/modules", tag = "modules",
    request_body(content = inline(WasmBytes), content_type = "application/wasm"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "stored", body = ModuleView),
        (status = 200, description = "already stored", body = ModuleView),
        (status = 400, description = "an empty body", body = ErrorBody),
        (status = 422, description = "not a task component (the message says why)", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn upload_module(
    State(ctx): State<AppState>,
    _: Admin,
    req: Request,
) -> Result<impl IntoResponse, ApiError> {
    let body = read_body(req, ctx.max_body).await?;
    store(&ctx, body.to_vec()).await
}

/// Uploads a component under the hash the client computed; a body with a
/// different hash is refused (400). Idempotent.
#[utoipa::path(put, path = "/v1/modules/{hash}", tag = "modules",
    params(("hash" = ModuleHash, Path, description = "sha256:<64 hex digits> (or the bare digits)")),
    request_body(content = inline(WasmBytes), content_type = "application/wasm"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "stored", body = ModuleView),
        (status = 200, description = "already stored", body = ModuleView),
        (status = 400, description = "malformed hash, hash mismatch or an empty body", body = ErrorBody),
        (status = 422, description = "not a task component (the message says why)", body = ErrorBody),
        NeedsAdmin, TakesBody, UsesStorage,
    ))]
async fn put_module(
    State(ctx): State<AppState>,
    _: Admin,
    ApiPath(hash): ApiPath<String>,
    req: Request,
) -> Result<impl IntoResponse, ApiError> {
    let expected = ModuleHash::parse_lenient(&hash).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid module hash {hash:?}: {e} (expected sha256:<64 hex digits>)"
        ))
    })?;
    let body = read_body(req, ctx.max_body).await?;
    let actual = ModuleHash::of(&body);
    if actual != expected {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "hash_mismatch",
            format!("the body hashes to {actual}, not {expected}"),
        ));
    }
    store(&ctx, body.to_vec()).await
}

/// Every stored module, oldest first.
#[utoipa::path(get, path = "/v1/modules", tag = "modules", security(("bearer" = [])),
    responses(
        (status = 200, description = "modules", body = Vec<ModuleView>),
        NeedsToken, UsesStorage,
    ))]
async fn list_modules(
    State(ctx): State<AppState>,
    _: Submit,
) -> Result<axum::Json<Vec<ModuleView>>, ApiError> {
    let modules = ctx.registry.modules().await?;
    Ok(axum::Json(
        modules
            .into_iter()
            .map(|m| ModuleView::new(m, false))
            .collect(),
    ))
}

/// One module: size, imports, upload time.
#[utoipa::path(get, path = "/v1/modules/{hash}", tag = "modules",
    params(("hash" = ModuleHash, Path, description = "sha256:<64 hex digits> (or the bare digits)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the module", body = ModuleView),
        (status = 400, description = "malformed hash", body = ErrorBody),
        (status = 404, description = "unknown module", body = ErrorBody),
        NeedsToken, UsesStorage,
    ))]
async fn get_module(
    State(ctx): State<AppState>,
    _: Submit,
    ApiPath(hash): ApiPath<String>,
) -> Result<axum::Json<ModuleView>, ApiError> {
    let hash = ModuleHash::parse_lenient(&hash).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid module hash {hash:?}: {e} (expected sha256:<64 hex digits>)"
        ))
    })?;
    let info = ctx
        .registry
        .module_info(&hash)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("unknown module {hash}")))?;
    Ok(axum::Json(ModuleView::new(info, false)))
}
