//! `runner status <id> [--wait 30s]`: a job's state and result. The exit
//! code says how it ended: 0 success, 10 failure, 3 still running (or
//! waiting), 4 revoked or expired, 2 unknown job.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use serde_json::Value;

use super::client::{ApiArgs, ApiClient, CallError, api_path, report};

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
    let path = api_path(&["v1", "jobs", id]);
    let job = match poll_until(client, &path, wait, |job| {
        matches!(
            job["state"].as_str().unwrap_or_default(),
            "SUCCESS" | "FAILURE" | "REVOKED" | "EXPIRED"
        )
    })
    .await
    {
        Ok(j) => j,
        Err(e) => return Ok(report(e)),
    };
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(match job["state"].as_str().unwrap_or_default() {
        "SUCCESS" => ExitCode::SUCCESS,
        "FAILURE" => ExitCode::from(10),
        "REVOKED" | "EXPIRED" => ExitCode::from(4),
        _ => ExitCode::from(3),
    })
}

/// Reads `path` (a job or a workflow) until `ended` holds of the answer or
/// `wait` is over, in long-polls (`?wait=`) of at most 5 minutes each: a
/// wait longer than one poll, or a poll the server answers early, polls
/// again until the deadline.
pub async fn poll_until(
    client: &ApiClient,
    path: &str,
    wait: Duration,
    ended: impl Fn(&Value) -> bool,
) -> Result<Value, CallError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let url = if left.is_zero() {
            path.to_string()
        } else {
            format!(
                "{path}?wait={}ms",
                left.min(Duration::from_secs(300)).as_millis()
            )
        };
        let v = client.get(&url).await?;
        if ended(&v) || tokio::time::Instant::now() >= deadline {
            return Ok(v);
        }
    }
}
