//! One error type for every handler, and the JSON body extractor whose
//! rejections say what was wrong and where.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;

use serde::de::DeserializeOwned;

use crate::deploy::DeployError;
use crate::json_object::Object;
use crate::producer::EnqueueError;
use crate::queue::{BrokerError, JobError};
use crate::registry::RegistryError;

/// `{"error": {"code": "...", "message": "..."}}` with a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The body of every error response.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `not_found`, `invalid_module`, ...
    pub code: String,
    /// What was wrong, for a human.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl ApiError {
    /// The response, not logged: for answers that are not a failure of
    /// the request (a `/readyz` saying "not ready", probed every few
    /// seconds during an outage).
    pub fn unlogged(self) -> Response {
        let mut res = (
            self.status,
            axum::Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code.to_string(),
                    message: self.message,
                },
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        }
        self.unlogged()
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Job(j) => j.into(),
            BrokerError::UnknownQueue(q) => ApiError::not_found(format!("unknown queue {q:?}")),
            e if e.is_unavailable() => {
                ApiError::unavailable(format!("the broker is unreachable: {e}"))
            }
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownModule(_) => ApiError::not_found(e.to_string()),
            RegistryError::Redis(_) => {
                ApiError::unavailable(format!("the registry is unreachable: {e}"))
            }
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::UnknownTask(_) => ApiError::not_found(e.to_string()),
            JobError::Corrupt(_) => ApiError::internal(e.to_string()),
            JobError::Forbidden { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
            e => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<EnqueueError> for ApiError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::Invalid(j) => j.into(),
            EnqueueError::InBatch { index, source } => {
                let inner = ApiError::from(*source);
                ApiError::new(
                    inner.status,
                    inner.code,
                    format!("jobs[{index}]: {}", inner.message),
                )
            }
            EnqueueError::UnknownModule(_) => ApiError::not_found(e.to_string()),
            EnqueueError::Registry(r) => r.into(),
            EnqueueError::Broker(b) => b.into(),
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Invalid(_) => ApiError::unprocessable("invalid_module", e.to_string()),
            DeployError::Refused(_) => ApiError::unprocessable("refused", e.to_string()),
            DeployError::UnknownModule(_) => ApiError::not_found(e.to_string()),
            DeployError::Registry(r) => r.into(),
        }
    }
}

/// The maximum body size in an error message: `64 MiB (67108864 bytes)`.
pub fn describe_limit(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    let human = if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        bytesize::ByteSize(bytes as u64).display().iec().to_string()
    };
    format!("{human} ({bytes} bytes)")
}

/// Reads the whole body; a body over the limit is 413 with the limit in the
/// message. (What is left of an oversized body is read and thrown away
/// before the 413 goes out, `drain.rs`: the client then sees the 413, not
/// "connection reset".)
pub async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let declared = super::drain::declared_length(&req);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut stream = req.into_body().into_data_stream();
    // The declared length is the client's word: memory is taken as the
    // bytes arrive, beyond a first MiB (a client declaring the limit and
    // sending nothing took it all at once, per connection).
    const FIRST: u64 = 1024 * 1024;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(FIRST) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the request body is larger than the limit of {}",
            describe_limit(limit)
        ),
    )
}

/// A JSON body. Malformed JSON is 400 naming the line and column; a body
/// over the limit is 413. The content type is not checked (curl users
/// forget it), the text is.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<super::AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &super::AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state.max_body).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, which must be an object; an empty body counts as `{}`. A value of the wrong
/// type is named by its path (`limits.fuel: invalid type: ...`,
/// `jobs[2].countdown: ...`), so that the message says which field is
/// wrong; nesting deeper than serde_json's limit (128) is refused as
/// malformed, never recursed into.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    axum::Json::<Object<T>>::from_bytes(text)
        .map(|axum::Json(Object(v))| v)
        .map_err(|rejection| {
            let what = match &rejection {
                JsonRejection::JsonSyntaxError(_) => "malformed JSON",
                _ => "invalid request",
            };
            // The source is serde_json's error with the path in front; it
            // ends with "at line L column C".
            let detail = std::error::Error::source(&rejection)
                .map(ToString::to_string)
                .unwrap_or_else(|| rejection.body_text());
            ApiError::bad_request(format!("{what}: {detail}"))
        })
}

/// A path parameter. A rejection (a parameter that is not valid UTF-8
/// once percent-decoded) is a JSON 400 like every other error, not
/// axum's plain-text one.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| rejected(e.status(), e.body_text()))
    }
}

/// A query string. A rejection (`?limit=abc`) is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| rejected(e.status(), e.body_text()))
    }
}

fn rejected(status: StatusCode, message: String) -> ApiError {
    if status.is_server_error() {
        ApiError::internal(message)
    } else {
        ApiError::bad_request(message)
    }
}
