//! `runner bind NAME MODULE [--queue Q] [--grants JSON] ...`: binds a task
//! name to an uploaded module (`sha256:..`), a built-in (`builtin:report`)
//! or a local component file (uploaded first); `runner bind NAME --rollback`
//! binds the previous module again.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{ApiArgs, ApiClient, api_path, json_arg, report, text_or_file};
use crate::names::ModuleHash;

/// A binding's defaults and grants, as flags.
#[derive(Args, Debug, Default)]
pub struct BindOpts {
    /// Default queue of the task.
    #[arg(long, short = 'Q')]
    pub queue: Option<String>,
    /// Grants as JSON (`@grants.json` reads a file), e.g.
    /// '{"kv":{}, "http":{"allow":["https://hooks.slack.com"]}}'.
    #[arg(long)]
    pub grants: Option<String>,
    /// Wall-clock limit per run, e.g. 60s.
    #[arg(long)]
    pub time_limit: Option<String>,
    /// Memory limit, e.g. 64MiB.
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Global rate limit of the task, e.g. 30/m.
    #[arg(long)]
    pub rate_limit: Option<String>,
    /// Retry policy as JSON, e.g. '{"max_retries":5,"backoff_base_ms":1000,"backoff_cap_ms":60000,"jitter":true}'.
    #[arg(long)]
    pub retry: Option<String>,
}

impl BindOpts {
    /// The first of these flags given, if any.
    pub fn first_set(&self) -> Option<&'static str> {
        [
            ("--queue", self.queue.is_some()),
            ("--grants", self.grants.is_some()),
            ("--time-limit", self.time_limit.is_some()),
            ("--memory", self.memory.is_some()),
            ("--fuel", self.fuel.is_some()),
            ("--rate-limit", self.rate_limit.is_some()),
            ("--retry", self.retry.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, set)| set.then_some(flag))
    }

    pub fn body(&self, module: &str) -> anyhow::Result<Value> {
        let mut body = json!({ "module": module });
        let obj = body.as_object_mut().context("json object")?;
        if let Some(q) = &self.queue {
            obj.insert("queue".into(), json!(q));
        }
        if let Some(g) = &self.grants {
            obj.insert("grants".into(), json_arg("--grants", &text_or_file(g)?)?);
        }
        if let Some(t) = &self.time_limit {
            obj.insert("time_limit".into(), json!(t));
        }
        if let Some(m) = &self.memory {
            obj.insert("memory".into(), json!(m));
        }
        if let Some(f) = self.fuel {
            obj.insert("fuel".into(), json!(f));
        }
        if let Some(r) = &self.rate_limit {
            obj.insert("rate_limit".into(), json!(r));
        }
        if let Some(r) = &self.retry {
            obj.insert("retry".into(), json_arg("--retry", &text_or_file(r)?)?);
        }
        Ok(body)
    }
}

#[derive(Args, Debug)]
pub struct BindArgs {
    /// The task name.
    pub name: String,
    /// `sha256:<hex>`, `builtin:<name>` or a component file to upload.
    #[arg(required_unless_present = "rollback")]
    pub module: Option<String>,
    /// Bind the previous module again (with the defaults and grants it had).
    #[arg(long, conflicts_with = "module")]
    pub rollback: bool,
    #[command(flatten)]
    pub opts: BindOpts,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn execute(args: BindArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.api)?;
    let answer = if args.rollback {
        client
            .post_json(
                &api_path(&["v1", "tasks", &args.name, "rollback"]),
                &json!({}),
            )
            .await
    } else {
        let module = args.module.clone().unwrap_or_default();
        let module = if module.starts_with("sha256:") || module.starts_with("builtin:") {
            module
        } else {
            let bytes = std::fs::read(&module).with_context(|| format!("reading {module}"))?;
            let hash = ModuleHash::of(&bytes);
            let rb = client
                .request(Method::PUT, &format!("/v1/modules/{hash}"))
                .header("content-type", "application/wasm")
                .body(bytes);
            if let Err(e) = client.send(rb).await {
                return Ok(report(e));
            }
            hash.to_string()
        };
        let body = args.opts.body(&module)?;
        client
            .put_json(&api_path(&["v1", "tasks", &args.name]), &body)
            .await
    };
    match answer {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v["binding"])?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(e)),
    }
}
