//! `runner workflow submit FILE.json | status ID | watch ID | revoke ID`:
//! workflows (chain, group, chord) over the HTTP API. `status` and
//! `watch` exit as `runner status` does: 0 succeeded, 10 failed, 4
//! revoked, 3 still running, 2 unknown.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{ApiArgs, ApiClient, CallError, api_path, report};
use super::out::outln;
use super::status::poll_until;

#[derive(Args, Debug)]
pub struct WorkflowArgs {
    #[command(subcommand)]
    pub command: WorkflowCommand,
}

#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// Start the workflow a JSON file describes (`-` reads stdin): the
    /// body of `POST /v1/workflows`, `{"workflow": {...}}`.
    Submit {
        file: String,
        /// Then follow it until it ends (as `watch`).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a workflow: state, counts, each step.
    Status {
        id: String,
        /// Wait up to this long for it to end.
        #[arg(long, value_parser = crate::config::parse_bounded_duration, num_args = 0..=1, default_missing_value = "60s")]
        wait: Option<Duration>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Follow a workflow's progress live until it ends.
    Watch {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a workflow: steps not started never run.
    Revoke {
        id: String,
        /// Also stop its running jobs.
        #[arg(long)]
        terminate: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn execute(args: WorkflowArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        WorkflowCommand::Submit { file, watch, api } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let body: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{file}: invalid JSON: {e}"))?;
            let client = ApiClient::new(&api)?;
            let done = match client.post_json("/v1/workflows", &body).await {
                Ok(v) => v,
                Err(e) => return Ok(report(e)),
            };
            outln!("{}", serde_json::to_string_pretty(&done)?)?;
            match (watch, done["id"].as_str()) {
                (true, Some(id)) => follow(&client, id).await,
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        WorkflowCommand::Status { id, wait, api } => {
            let client = ApiClient::new(&api)?;
            let path = api_path(&["v1", "workflows", &id]);
            let ended = |wf: &Value| wf["state"].as_str().is_some_and(|s| s != "running");
            match poll_until(&client, &path, wait.unwrap_or_default(), ended).await {
                Ok(wf) => {
                    outln!("{}", serde_json::to_string_pretty(&wf)?)?;
                    Ok(exit_of(&wf))
                }
                Err(e) => Ok(report(e)),
            }
        }
        WorkflowCommand::Watch { id, api } => {
            let client = ApiClient::new(&api)?;
            follow(&client, &id).await
        }
        WorkflowCommand::Revoke { id, terminate, api } => {
            let client = ApiClient::new(&api)?;
            match client
                .post_json(
                    &api_path(&["v1", "workflows", &id, "revoke"]),
                    &json!({ "terminate": terminate }),
                )
                .await
            {
                Ok(v) => {
                    outln!("{}", serde_json::to_string_pretty(&v)?)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(report(e)),
            }
        }
    }
}

/// The exit code of a workflow's state.
fn exit_of(wf: &Value) -> ExitCode {
    match wf["state"].as_str().unwrap_or_default() {
        "succeeded" => ExitCode::SUCCESS,
        "failed" => ExitCode::from(10),
        "revoked" => ExitCode::from(4),
        _ => ExitCode::from(3),
    }
}

/// Prints a line per progress event until the workflow ends, then its
/// status.
async fn follow(client: &ApiClient, id: &str) -> anyhow::Result<ExitCode> {
    let res = client
        .request(Method::GET, &api_path(&["v1", "workflows", id, "events"]))
        .send()
        .await;
    let res = match res {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Ok(report(CallError::Refused { status, message }));
        }
        Err(e) => return Err(e.into()),
    };
    let mut last = Value::Null;
    let mut stream = res.bytes_stream();
    let mut buf = String::new();
    let mut event = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(nl) = buf.find('\n') {
            let line = buf[..nl].trim_end_matches('\r').to_string();
            buf.drain(..=nl);
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                let Ok(v) = serde_json::from_str::<Value>(d.trim()) else {
                    continue;
                };
                match event.as_str() {
                    "progress" => outln!(
                        "{} {}/{}",
                        v["state"].as_str().unwrap_or("?"),
                        v["done"],
                        v["total"]
                    )?,
                    "workflow" => {
                        outln!(
                            "{} {}/{}",
                            v["state"].as_str().unwrap_or("?"),
                            v["done"],
                            v["total"]
                        )?;
                        last = v;
                    }
                    _ => {}
                }
            }
        }
    }
    if last.is_null() {
        last = match client.get(&api_path(&["v1", "workflows", id])).await {
            Ok(v) => v,
            Err(e) => return Ok(report(e)),
        };
    }
    outln!("{}", serde_json::to_string_pretty(&last)?)?;
    Ok(exit_of(&last))
}
