//! `runner revoke ID [--terminate]`, or in bulk:
//! `runner revoke --task T [--queue Q] [--terminate] --yes`.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::client::{ApiArgs, ApiClient, api_path, cell, report};
use super::out::outln;

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The job to revoke.
    #[arg(required_unless_present_any = ["task", "queue"], conflicts_with_all = ["task", "queue"])]
    pub id: Option<String>,
    /// Every job of this task (waiting and running).
    #[arg(long)]
    pub task: Option<String>,
    /// Every job of this queue (with --task: that task's jobs in it).
    #[arg(long)]
    pub queue: Option<String>,
    /// Also stop the job if it is running (at its next epoch check).
    #[arg(long)]
    pub terminate: bool,
    /// For --task and --queue: do it. Without it, says how many jobs would
    /// be revoked and revokes nothing.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn execute(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.api)?;
    let Some(id) = &args.id else {
        return revoke_many(&client, &args).await;
    };
    match client
        .post_json(
            &api_path(&["v1", "jobs", id, "revoke"]),
            &json!({ "terminate": args.terminate }),
        )
        .await
    {
        Ok(v) => {
            let outcome = v["outcome"].as_str().unwrap_or_default();
            match v["state"].as_str() {
                Some(state) => outln!("{outcome} ({state})")?,
                None => outln!("{outcome}")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(e)),
    }
}

async fn revoke_many(client: &ApiClient, args: &RevokeArgs) -> anyhow::Result<ExitCode> {
    let body = json!({
        "task": args.task,
        "queue": args.queue,
        "terminate": args.terminate,
        "dry_run": !args.yes,
    });
    let v = match client.post_json("/v1/jobs/revoke", &body).await {
        Ok(v) => v,
        Err(e) => return Ok(report(e)),
    };
    let waiting = v["purged"].as_array().map_or(0, Vec::len);
    let running = v["running"].as_array().map_or(0, Vec::len);
    if !args.yes {
        eprintln!(
            "{waiting} waiting and {running} running jobs would be revoked; nothing was \
             changed: run again with --yes to revoke them"
        );
        return Ok(ExitCode::FAILURE);
    }
    outln!("revoked {waiting} waiting jobs; {running} running")?;
    super::purge::print_ids(&v["purged"])?;
    for r in v["running"].as_array().into_iter().flatten() {
        outln!("{} {}", cell(&r["id"]), cell(&r["outcome"]))?;
    }
    Ok(ExitCode::SUCCESS)
}
