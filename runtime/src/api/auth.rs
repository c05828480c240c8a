//! Bearer tokens with two roles: `submit` (enqueue and read) and `admin`
//! (everything: upload, bind, grants, schedules, revoke, replay). Tokens are
//! compared in constant time (as sha256 digests, so that their length does
//! not leak either). With no token configured every request is refused
//! unless the operator opted out with `[server] open = true`.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{ApiError, AppState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Submit,
    Admin,
}

#[derive(Clone, Default)]
pub struct Auth {
    admin: Vec<[u8; 32]>,
    submit: Vec<[u8; 32]>,
    open: bool,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    pub fn new(admin: &[String], submit: &[String]) -> Self {
        Auth {
            admin: admin.iter().map(|t| digest(t)).collect(),
            submit: submit.iter().map(|t| digest(t)).collect(),
            open: false,
        }
    }

    /// No tokens: every request is admin. Only on the operator's word.
    pub fn open() -> Self {
        Auth {
            open: true,
            ..Default::default()
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The role of a presented token, checking every configured token.
    fn role_of(&self, token: &str) -> Option<Role> {
        let d = digest(token);
        let mut admin = subtle::Choice::from(0);
        for t in &self.admin {
            admin |= t.ct_eq(&d);
        }
        let mut submit = subtle::Choice::from(0);
        for t in &self.submit {
            submit |= t.ct_eq(&d);
        }
        if bool::from(admin) {
            Some(Role::Admin)
        } else if bool::from(submit) {
            Some(Role::Submit)
        } else {
            None
        }
    }

    /// Checks the request's `Authorization` header for `needed`.
    pub fn check(&self, parts: &Parts, needed: Role) -> Result<Role, ApiError> {
        if self.open {
            return Ok(Role::Admin);
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing token: send `Authorization: Bearer <token>`",
                )
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "malformed Authorization header: expected `Bearer <token>`",
                )
            })?;
        let role = self.role_of(token).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")
        })?;
        if role < needed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route needs an admin token; a submit token may only enqueue and read",
            ));
        }
        Ok(role)
    }
}

/// Extractor: the request carries an admin token.
pub struct Admin;
/// Extractor: the request carries a submit or admin token (which one).
pub struct Submit(pub Role);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth.check(parts, Role::Admin).map(|_| Admin)
    }
}

impl FromRequestParts<AppState> for Submit {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth.check(parts, Role::Submit).map(Submit)
    }
}

/// Declares the bearer scheme in the OpenAPI document.
pub struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
