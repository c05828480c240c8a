//! The CLI's side of the HTTP API: where it is (`--url` / `RUNNER_URL`),
//! the token (`--token` / `RUNNER_TOKEN`), and error answers turned into
//! readable messages with distinct exit codes (2 for a refused request,
//! 1 when the server cannot be reached or fails).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use reqwest::{Method, RequestBuilder, StatusCode};
use runner_host_fns::error::error_chain;
use serde_json::Value;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The runner's API, e.g. http://127.0.0.1:8080.
    #[arg(
        long = "url",
        env = "RUNNER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Bearer token (admin for upload, bind and revoke; submit for the rest).
    #[arg(long = "token", env = "RUNNER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// An API call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error: the request was refused.
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
    /// Says why, whole: reqwest's own message does not ("error sending
    /// request for url (...)"); its causes do ("Connection refused").
    #[error("cannot reach {url}: {}", error_chain(.cause))]
    Unreachable { url: String, cause: reqwest::Error },
    #[error("{0}")]
    Other(String),
}

impl CallError {
    /// 2 for a refusal (4xx: fix the request), 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CallError::Refused { status, .. } if status.is_client_error() => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// The path `/<segments...>`, each segment percent-encoded: a name typed
/// with `#`, `?`, `/` or `%` reaches the server as written (which refuses
/// it, naming it), never as the path of another beat, task or queue.
pub fn api_path(segments: &[&str]) -> String {
    let mut url = reqwest::Url::parse("http://runner/").expect("a valid URL");
    url.path_segments_mut()
        .expect("an http URL has a path")
        .pop_if_empty()
        .extend(segments);
    url.path().to_string()
}

impl ApiClient {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            base: args.url.trim_end_matches('/').to_string(),
            token: args.token.clone(),
            http,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// Sends and reads a JSON answer; an error status becomes `Refused`
    /// with the server's message.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Value, CallError> {
        let res = rb.send().await.map_err(|cause| CallError::Unreachable {
            url: self.base.clone(),
            cause,
        })?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| CallError::Other(format!("reading the answer: {}", error_chain(&e))))?;
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(CallError::Refused { status, message });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| CallError::Other(format!("the server sent invalid JSON: {e}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value, CallError> {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        self.send(self.request(Method::PUT, path).json(body)).await
    }
}

/// Prints a failed call and returns its exit code.
pub fn report(e: CallError) -> ExitCode {
    eprintln!("error: {e}");
    e.exit_code()
}

/// `@file` reads a file; anything else is the text itself.
pub fn text_or_file(arg: &str) -> anyhow::Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}")),
        None => Ok(arg.to_string()),
    }
}

/// Parses JSON given on the command line, naming the flag and position.
pub fn json_arg(flag: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{flag}: invalid JSON: {e}"))
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::api_path;

    #[test]
    fn a_path_segment_is_sent_as_written() {
        assert_eq!(
            api_path(&["v1", "schedules", "nightly"]),
            "/v1/schedules/nightly"
        );
        assert_eq!(
            api_path(&["v1", "schedules", "report#2"]),
            "/v1/schedules/report%232"
        );
        assert_eq!(
            api_path(&["v1", "tasks", "a?b/c%d"]),
            "/v1/tasks/a%3Fb%2Fc%25d"
        );
        assert_eq!(api_path(&["v1", "queues", "é"]), "/v1/queues/%C3%A9");
    }
}
