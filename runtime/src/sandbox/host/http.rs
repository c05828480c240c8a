//! `runner:task/http`: outgoing HTTP requests to granted hosts.

use std::time::Instant;

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::http::{self, Request, Response};
use crate::sandbox::run::RunState;

/// The HTTP client one run talks to, already bound to the task's grant
/// (allowed hosts); it enforces the SSRF policy on every hop.
pub trait HttpClient: Send + Sync {
    /// Sends the request. `request.timeout_ms` is set, and no longer than the
    /// time the job has left.
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, HostError>>;
}

impl http::Host for RunState {
    async fn send(&mut self, mut request: Request) -> GuestResult<Response> {
        let client = match self.host.http.service("http") {
            Ok(client) => client,
            Err(e) => return Ok(Err(e)),
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        let left_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
        request.timeout_ms = Some(request.timeout_ms.map_or(left_ms, |t| t.min(left_ms)));
        Ok(client.send(request).await)
    }
}
