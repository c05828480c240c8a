//! `runner purge QUEUE [--ready-only|--delayed-only] [--task T] --yes`

use std::process::ExitCode;

use clap::Args;
use serde_json::{Value, json};

use super::client::{ApiArgs, ApiClient, api_path, cell, report};
use super::out::{PrintError, outln};

#[derive(Args, Debug)]
pub struct PurgeArgs {
    pub queue: String,
    /// Only the jobs that may run now (not those waiting for a due time).
    #[arg(long, conflicts_with = "delayed_only")]
    pub ready_only: bool,
    /// Only the jobs waiting for a due time (countdowns, ETAs, retries).
    #[arg(long)]
    pub delayed_only: bool,
    /// Only the jobs of this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Do it. Without it, says how many jobs would be purged and purges
    /// nothing.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn execute(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.api)?;
    let body = json!({
        "ready": !args.delayed_only,
        "delayed": !args.ready_only,
        "task": args.task,
        "dry_run": !args.yes,
    });
    let what = match (args.ready_only, args.delayed_only) {
        (true, _) => "ready",
        (_, true) => "delayed",
        _ => "waiting",
    };
    let of_task = args
        .task
        .as_deref()
        .map(|t| format!(" of task {t}"))
        .unwrap_or_default();
    match client
        .post_json(&api_path(&["v1", "queues", &args.queue, "purge"]), &body)
        .await
    {
        Ok(v) if args.yes => {
            outln!(
                "purged {} {what} jobs{of_task} from queue {}",
                cell(&v["count"]),
                args.queue
            )?;
            print_ids(&v["purged"])?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(v) => {
            eprintln!(
                "{} {what} jobs{of_task} would be purged from queue {}; nothing was changed: \
                 run again with --yes to purge them",
                cell(&v["count"]),
                args.queue
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Ok(report(e)),
    }
}

/// One id per line.
pub(super) fn print_ids(ids: &Value) -> Result<(), PrintError> {
    for id in ids.as_array().into_iter().flatten() {
        outln!("{}", cell(id))?;
    }
    Ok(())
}
