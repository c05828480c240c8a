//! `runner status <id> [--wait 30s]`: a job's state and result. The exit
//! code says how it ended: 0 success, 10 failure, 3 still running (or
//! waiting), 4 revoked or expired, 2 unknown job.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::client::{ApiArgs, ApiClient, report};

#[derive(Args, Debug)]
pub struct StatusArgs {
    pub id: String,
    /// Wait up to this long for the job to end.
    #[arg(long, value_parser = crate::config::parse_bounded_duration, num_args = 0..=1, default_missing_value = "60s")]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn execute(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.api)?;
    wait_and_print(&client, &args.id, args.wait.unwrap_or_default()).await
}

/// Prints the job (waiting up to `wait`, in long-polls of at most 5 min)
/// and returns the exit code of its state.
pub async fn wait_and_print(
    client: &ApiClient,
    id: &str,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + wait;
    let job = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let path = if left.is_zero() {
            format!("/v1/jobs/{id}")
        } else {
            format!(
                "/v1/jobs/{id}?wait={}ms",
                left.min(Duration::from_secs(300)).as_millis()
            )
        };
        let job = match client.get(&path).await {
            Ok(j) => j,
            Err(e) => return Ok(report(e)),
        };
        let state = job["state"].as_str().unwrap_or_default();
        let is_final = matches!(state, "SUCCESS" | "FAILURE" | "REVOKED" | "EXPIRED");
        if is_final || tokio::time::Instant::now() >= deadline {
            break job;
        }
    };
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(match job["state"].as_str().unwrap_or_default() {
        "SUCCESS" => ExitCode::SUCCESS,
        "FAILURE" => ExitCode::from(10),
        "REVOKED" | "EXPIRED" => ExitCode::from(4),
        _ => ExitCode::from(3),
    })
}
