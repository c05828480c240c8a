//! `runner:task/http`: outgoing HTTP requests to granted hosts.

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::http::{self, Request, Response};
use crate::sandbox::run::RunState;
use runner_host_fns::http::HttpConfig;

use super::Service;
use crate::registry::TaskGrants;
use runner_host_fns::http::{HttpGrant, HttpRequest, HttpService};
use std::sync::Arc;
use std::time::Duration;

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

/// The process's [`HttpService`] under one task's allow list.
struct TaskHttp {
    service: Arc<HttpService>,
    grant: HttpGrant,
}

impl HttpClient for TaskHttp {
    fn send(&self, request: Request) -> BoxFuture<'_, Result<Response, HostError>> {
        Box::pin(async move {
            let request = HttpRequest {
                method: request.method,
                url: request.url,
                headers: request.headers,
                body: request.body,
                timeout: request
                    .timeout_ms
                    .map(|ms| Duration::from_millis(u64::from(ms))),
            };
            let response = self.service.send(&self.grant, &request).await?;
            Ok(Response {
                status: response.status,
                headers: response.headers,
                body: response.body,
            })
        })
    }
}

/// The process's HTTP client `[host.http]` describes (none without it).
pub(super) fn service(config: Option<&HttpConfig>) -> Option<Arc<HttpService>> {
    config.map(|c| Arc::new(HttpService::new(c.clone())))
}

/// The HTTP client under the task's allow list.
pub(super) fn grant(
    service: &Option<Arc<HttpService>>,
    grants: &TaskGrants,
) -> Service<dyn HttpClient> {
    Service::bind(service, grants.http.as_ref(), |service, grant| {
        Arc::new(TaskHttp {
            service,
            grant: grant.clone(),
        }) as Arc<dyn HttpClient>
    })
}
