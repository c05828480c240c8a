//! # `builtin:notify`: a webhook notification
//!
//! Posts one notification to a Microsoft Teams, Slack or generic JSON
//! webhook. Bind it to the `notifications` queue with a global rate limit
//! (`[queues.notifications] rate_limit = "30/m"` in `runner.toml`): every
//! worker shares that limit, so a burst of notifications is spread out
//! instead of being refused by the webhook.
//!
//! Needs the `http` grant for the webhook's host, e.g.
//! `http = { allow = ["https://hooks.slack.com", "https://*.webhook.office.com"] }`.
//!
//! ## Input
//!
//! ```json
//! {
//!   "kind": "teams",
//!   "url": "https://example.webhook.office.com/webhookb2/...",
//!   "title": "夜間バックアップ",
//!   "text": "すべてのバックアップを検証しました。",
//!   "fields": { "対象": "12 台", "所要時間": "3 分" }
//! }
//! ```
//!
//! | field | type | |
//! |---|---|---|
//! | `kind` | `"slack"`, `"teams"` or `"json"` | required |
//! | `url` | string | the webhook URL; required |
//! | `title` | string | optional; at least one of `title` and `text` |
//! | `text` | string | optional |
//! | `fields` | object | optional labelled values, in the order given; numbers and booleans are shown as written |
//!
//! What is posted:
//!
//! - `slack`: an incoming-webhook message: the title in bold above the text,
//!   the fields as a two-column section (text is escaped, so nothing is read
//!   as a link or a mention).
//! - `teams`: an Adaptive Card (a Workflows webhook): the title as a bold
//!   text block, the text, the fields as a fact set.
//! - `json`: `{"title", "text", "fields": {...}, "job": {"id", "task",
//!   "schedule"}}`, for any endpoint of your own.
//!
//! ## Output
//!
//! `{"kind": "teams", "status": 200}`: the webhook's status. A 5xx, 408 or
//! 429 answer (or a connection failure) is a retry, another 4xx a failure.

use runner_sdk::http::{self, SlackMessage, TeamsMessage};
use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Slack,
    Teams,
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    kind: Kind,
    url: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    fields: Map<String, Value>,
}

#[derive(Serialize)]
struct Output {
    kind: Kind,
    status: u16,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    if input.url.trim().is_empty() {
        return Err(TaskError::fail("`url` must not be empty"));
    }
    let title = input.title.as_deref().map(str::trim).unwrap_or("");
    let text = input.text.as_deref().map(str::trim).unwrap_or("");
    if title.is_empty() && text.is_empty() {
        return Err(TaskError::fail(
            "a notification needs a `title` or a `text` (both are empty)",
        ));
    }
    let fields: Vec<(String, String)> = input
        .fields
        .iter()
        .map(|(label, value)| (label.clone(), field_text(value)))
        .collect();

    let response = match input.kind {
        Kind::Slack => {
            let text = match (title.is_empty(), text.is_empty()) {
                (false, false) => format!("*{title}*\n{text}"),
                (false, true) => format!("*{title}*"),
                _ => text.to_string(),
            };
            let message = fields
                .into_iter()
                .fold(SlackMessage::new(text), |m, (label, value)| {
                    m.field(label, value)
                });
            message.send(&input.url)?
        }
        Kind::Teams => {
            let mut message = TeamsMessage::new(text);
            if !title.is_empty() {
                message = message.title(title);
            }
            let message = fields
                .into_iter()
                .fold(message, |m, (label, value)| m.fact(label, value));
            message.send(&input.url)?
        }
        Kind::Json => {
            let job = ctx.job();
            let body = json!({
                "title": title,
                "text": text,
                "fields": Value::Object(input.fields),
                "job": { "id": job.id, "task": job.task, "schedule": job.schedule },
            });
            http::post_json(&input.url, &body)?.error_for_status()?
        }
    };
    ctx.info(format!(
        "{:?} webhook answered {}",
        input.kind, response.status
    ));
    Ok(Output {
        kind: input.kind,
        status: response.status,
    })
}

/// A field's value as shown: strings as they are, anything else as JSON.
fn field_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
