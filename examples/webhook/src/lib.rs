//! Posts to a webhook: `{"url": "...", "kind": "json", "payload": {...}}`,
//! or a Slack / Teams message with `"kind": "slack"` / `"teams"` and `"text"`
//! (plus optional `"title"` and `"fields"`). Returns the status. Needs the
//! `http` grant for the URL's host; 5xx and 429 answers become retries.

use runner_sdk::http::{self, SlackMessage, TeamsMessage};
use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Json,
    Slack,
    Teams,
}

#[derive(Deserialize)]
struct Input {
    url: String,
    kind: Kind,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    text: String,
    title: Option<String>,
    #[serde(default)]
    fields: Vec<(String, String)>,
}

#[derive(Serialize)]
struct Output {
    status: u16,
    body: String,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let response = match input.kind {
        Kind::Json => http::post_json(&input.url, &input.payload)?.error_for_status()?,
        Kind::Slack => {
            let mut message = SlackMessage::new(input.text);
            for (label, value) in input.fields {
                message = message.field(label, value);
            }
            message.send(&input.url)?
        }
        Kind::Teams => {
            let mut message = TeamsMessage::new(input.text);
            if let Some(title) = input.title {
                message = message.title(title);
            }
            for (label, value) in input.fields {
                message = message.fact(label, value);
            }
            message.send(&input.url)?
        }
    };
    ctx.info(format!("webhook answered {}", response.status));
    Ok(Output {
        status: response.status,
        body: response.text(),
    })
}
