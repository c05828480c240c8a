//! Outgoing HTTP requests: webhooks and APIs. Needs the `http` grant; only
//! the hosts it names are reachable (private and loopback addresses only if
//! named explicitly).
//!
//! ```no_run
//! use runner_sdk::{http, TaskError};
//!
//! fn notify(webhook: &str) -> Result<(), TaskError> {
//!     // Any status is a response; `error_for_status` turns 5xx/429 into a
//!     // retry and other 4xx into a failure.
//!     http::post_json(webhook, &serde_json::json!({ "event": "done" }))?.error_for_status()?;
//!
//!     http::SlackMessage::new("Nightly report is ready")
//!         .field("Rows", "1,024")
//!         .send("https://hooks.slack.com/services/T000/B000/XXXX")?;
//!     Ok(())
//! }
//! ```

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::HostError;
use crate::bindings::runner::task::http as wit;

/// An HTTP request, built step by step and sent with [`Request::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
    // A body that could not be encoded; reported by `send`, so that the
    // builder chain stays free of `?`.
    error: Option<String>,
}

impl Request {
    /// A request with any method (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`,
    /// `HEAD`); the method is upper-cased.
    pub fn new(method: impl AsRef<str>, url: impl Into<String>) -> Self {
        Request {
            method: method.as_ref().to_ascii_uppercase(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: None,
            error: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Request::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Self {
        Request::new("POST", url)
    }

    /// A `PUT` request.
    pub fn put(url: impl Into<String>) -> Self {
        Request::new("PUT", url)
    }

    /// A `PATCH` request.
    pub fn patch(url: impl Into<String>) -> Self {
        Request::new("PATCH", url)
    }

    /// A `DELETE` request.
    pub fn delete(url: impl Into<String>) -> Self {
        Request::new("DELETE", url)
    }

    /// A `HEAD` request.
    pub fn head(url: impl Into<String>) -> Self {
        Request::new("HEAD", url)
    }

    /// Adds a header (repeated names are sent repeatedly).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: impl AsRef<str>) -> Self {
        let value = format!("Bearer {}", token.as_ref());
        self.header("Authorization", value)
    }

    /// Sets the body as raw bytes.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets the body to `value` as JSON, with `Content-Type: application/json`
    /// unless a content type was already set. A value that cannot be encoded
    /// makes [`send`](Request::send) fail with [`HostError::Invalid`].
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => self.body = Some(body),
            Err(e) => self.error = Some(format!("cannot encode the request body as JSON: {e}")),
        }
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            self.headers
                .push(("Content-Type".into(), "application/json".into()));
        }
        self
    }

    /// Sets a timeout for this request; the host caps it at the job's time
    /// left.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request. Any status is a response; see
    /// [`Response::error_for_status`].
    pub fn send(self) -> Result<Response, HostError> {
        send(self)
    }

    fn into_wit(self) -> Result<wit::Request, HostError> {
        if let Some(error) = self.error {
            return Err(HostError::Invalid(error));
        }
        Ok(wit::Request {
            method: self.method,
            url: self.url,
            headers: self.headers,
            body: self.body,
            timeout_ms: self
                .timeout
                .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
        })
    }
}

/// Sends `request`; same as [`Request::send`].
pub fn send(request: Request) -> Result<Response, HostError> {
    let request = request.into_wit()?;
    Ok(wit::send(&request)?.into())
}

/// `GET url`.
pub fn get(url: impl Into<String>) -> Result<Response, HostError> {
    Request::get(url).send()
}

/// `POST url` with `value` as a JSON body.
pub fn post_json<T: Serialize + ?Sized>(
    url: impl Into<String>,
    value: &T,
) -> Result<Response, HostError> {
    Request::post(url).json(value).send()
}

/// An HTTP response, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body (capped in size by the host).
    pub body: Vec<u8>,
}

impl From<wit::Response> for Response {
    fn from(r: wit::Response) -> Self {
        Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 is replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON into `T`; a body that does not parse is an
    /// [`HostError::Invalid`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HostError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HostError::Invalid(format!("response body is not the expected JSON: {e}")))
    }

    /// The response itself if its status is 1xx-3xx; otherwise an error that
    /// says whether retrying may help: 408, 425, 429 and 5xx are
    /// [`HostError::Transient`], other 4xx [`HostError::Permanent`].
    pub fn error_for_status(self) -> Result<Response, HostError> {
        if self.status < 400 {
            return Ok(self);
        }
        let body = self.text();
        let mut excerpt: String = body.chars().take(200).collect();
        if excerpt.len() < body.len() {
            excerpt.push('…');
        }
        let message = if excerpt.trim().is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {}", self.status, excerpt.trim())
        };
        if matches!(self.status, 408 | 425 | 429) || self.status >= 500 {
            Err(HostError::Transient(message))
        } else {
            Err(HostError::Permanent(message))
        }
    }
}

/// A message for a Slack incoming webhook. All text is literal: `&`, `<` and
/// `>` are escaped, so nothing is read as a link or a mention.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlackMessage {
    text: String,
    fields: Vec<(String, String)>,
}

impl SlackMessage {
    /// A message with this text (also the notification's preview).
    pub fn new(text: impl Into<String>) -> Self {
        SlackMessage {
            text: text.into(),
            fields: Vec::new(),
        }
    }

    /// Adds a labelled value, shown in two columns under the text.
    pub fn field(mut self, label: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.push((label.into(), value.into()));
        self
    }

    /// The JSON payload the webhook expects.
    pub fn to_json(&self) -> Value {
        let text = slack_escape(&self.text);
        if self.fields.is_empty() {
            return json!({ "text": text });
        }
        let mut blocks = vec![json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": text },
        })];
        // Slack allows at most 10 fields per section block.
        for chunk in self.fields.chunks(10) {
            let fields: Vec<Value> = chunk
                .iter()
                .map(|(label, value)| {
                    json!({
                        "type": "mrkdwn",
                        "text": format!("*{}*\n{}", slack_escape(label), slack_escape(value)),
                    })
                })
                .collect();
            blocks.push(json!({ "type": "section", "fields": fields }));
        }
        json!({ "text": text, "blocks": blocks })
    }

    /// Posts the message to the webhook URL; a non-success status is an
    /// error (see [`Response::error_for_status`]).
    pub fn send(&self, webhook_url: impl Into<String>) -> Result<Response, HostError> {
        post_json(webhook_url, &self.to_json())?.error_for_status()
    }
}

fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A message for a Microsoft Teams incoming webhook (a Workflows "post to a
/// channel when a webhook request is received" URL), sent as an Adaptive
/// Card with a title, a text and optional facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeamsMessage {
    title: Option<String>,
    text: String,
    facts: Vec<(String, String)>,
}

impl TeamsMessage {
    /// A message with this text.
    pub fn new(text: impl Into<String>) -> Self {
        TeamsMessage {
            title: None,
            text: text.into(),
            facts: Vec::new(),
        }
    }

    /// Sets a bold title above the text.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Adds a labelled value ("Status: done"), shown as a fact list.
    pub fn fact(mut self, label: impl Into<String>, value: impl Into<String>) -> Self {
        self.facts.push((label.into(), value.into()));
        self
    }

    /// The JSON payload the webhook expects.
    pub fn to_json(&self) -> Value {
        let mut body = Vec::new();
        if let Some(title) = &self.title {
            body.push(json!({
                "type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true,
            }));
        }
        body.push(json!({ "type": "TextBlock", "text": self.text, "wrap": true }));
        if !self.facts.is_empty() {
            let facts: Vec<Value> = self
                .facts
                .iter()
                .map(|(title, value)| json!({ "title": title, "value": value }))
                .collect();
            body.push(json!({ "type": "FactSet", "facts": facts }));
        }
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                },
            }],
        })
    }

    /// Posts the message to the webhook URL; a non-success status is an
    /// error (see [`Response::error_for_status`]).
    pub fn send(&self, webhook_url: impl Into<String>) -> Result<Response, HostError> {
        post_json(webhook_url, &self.to_json())?.error_for_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.into(),
        }
    }

    #[test]
    fn builder_fills_the_request() {
        let req = Request::new("post", "https://example.com/hook")
            .header("X-Id", "1")
            .bearer("t0k")
            .json(&json!({ "a": 1 }))
            .timeout(Duration::from_secs(5))
            .into_wit()
            .expect("valid");
        assert_eq!(req.method, "POST");
        assert_eq!(req.url, "https://example.com/hook");
        assert_eq!(
            req.headers,
            [
                ("X-Id".to_string(), "1".to_string()),
                ("Authorization".to_string(), "Bearer t0k".to_string()),
                ("Content-Type".to_string(), "application/json".to_string()),
            ]
        );
        assert_eq!(req.body.as_deref(), Some(&br#"{"a":1}"#[..]));
        assert_eq!(req.timeout_ms, Some(5000));
    }

    #[test]
    fn json_keeps_an_explicit_content_type() {
        let req = Request::put("https://x")
            .header("content-type", "application/vnd.api+json")
            .json(&[1])
            .into_wit()
            .expect("valid");
        assert_eq!(req.headers.len(), 1);
    }

    #[test]
    fn unencodable_json_fails_at_send() {
        use std::collections::HashMap;
        let bad: HashMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        let err = Request::post("https://x")
            .json(&bad)
            .into_wit()
            .expect_err("not JSON");
        assert!(matches!(err, HostError::Invalid(m) if m.contains("JSON")));
    }

    #[test]
    fn get_has_no_body_and_no_timeout() {
        let req = Request::get("https://x").into_wit().expect("valid");
        assert_eq!(
            (req.method.as_str(), req.body, req.timeout_ms),
            ("GET", None, None)
        );
        let req = Request::head("https://x")
            .timeout(Duration::MAX)
            .into_wit()
            .expect("valid");
        assert_eq!(req.timeout_ms, Some(u32::MAX));
    }

    #[test]
    fn status_classification() {
        assert!(response(204, "").error_for_status().is_ok());
        assert!(response(302, "").error_for_status().is_ok());
        for status in [408, 425, 429, 500, 503] {
            let err = response(status, "busy")
                .error_for_status()
                .expect_err("error");
            assert!(err.is_transient(), "{status}");
            assert_eq!(err.message(), format!("HTTP {status}: busy"));
        }
        let err = response(404, "").error_for_status().expect_err("error");
        assert_eq!(err, HostError::Permanent("HTTP 404".into()));
        let long = "x".repeat(500);
        let err = response(400, &long).error_for_status().expect_err("error");
        assert!(err.message().len() < 220 && err.message().ends_with('…'));
    }

    #[test]
    fn response_helpers() {
        let r = response(200, r#"{"ok":true}"#);
        assert!(r.is_success());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("x-missing"), None);
        assert_eq!(r.json::<Value>().expect("json")["ok"], true);
        assert!(matches!(
            response(200, "nope").json::<Value>(),
            Err(HostError::Invalid(_))
        ));
        assert_eq!(response(200, "hé").text(), "hé");
    }

    #[test]
    fn slack_payloads() {
        assert_eq!(
            SlackMessage::new("a <b> & c").to_json(),
            json!({ "text": "a &lt;b&gt; &amp; c" })
        );
        let fields: Vec<(String, String)> = (0..12)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let mut msg = SlackMessage::new("report");
        for (k, v) in &fields {
            msg = msg.field(k, v);
        }
        let v = msg.to_json();
        assert_eq!(v["text"], "report");
        let blocks = v["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), 3, "text + 10 fields + 2 fields");
        assert_eq!(blocks[1]["fields"].as_array().map(Vec::len), Some(10));
        assert_eq!(blocks[2]["fields"][1]["text"], "*k11*\nv11");
    }

    #[test]
    fn teams_payload_is_an_adaptive_card() {
        let v = TeamsMessage::new("Nightly run finished")
            .title("Runner")
            .fact("Jobs", "42")
            .to_json();
        assert_eq!(v["type"], "message");
        let card = &v["attachments"][0];
        assert_eq!(
            card["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let body = card["content"]["body"].as_array().expect("body");
        assert_eq!(body[0]["text"], "Runner");
        assert_eq!(body[1]["text"], "Nightly run finished");
        assert_eq!(
            body[2]["facts"][0],
            json!({ "title": "Jobs", "value": "42" })
        );
        let plain = TeamsMessage::new("x").to_json();
        assert_eq!(
            plain["attachments"][0]["content"]["body"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }
}
