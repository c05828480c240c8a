//! `runner:task/http`: outgoing HTTP requests to granted hosts.

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::http::{self, Request, Response};
use crate::sandbox::run::RunState;

/// The HTTP client one run talks to, already bound to the task's grant
/// (allowed hosts); it enforces the SSRF policy on every hop.
pub trait HttpClient: Send + Sync {
    /// Sends the request. `request.timeout_ms` is the task's own (the
    /// service's default when `None`); the job's deadline is enforced
    /// around every host call, so a request still
    /// waiting when the time limit passes ends the run with `TimeLimit`.
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, HostError>>;
}

impl http::Host for RunState {
    async fn send(&mut self, request: Request) -> GuestResult<Response> {
        // No clamping of the request's timeout to the time left: a timeout
        // firing together with the deadline would hand the task a
        // `transient` error to turn into a retry, where the job's outcome
        // is the time limit.
        self.host_call("http", "send", |host| &host.http)
            .run(|client| async move { client.send(request).await })
            .await
    }
}
