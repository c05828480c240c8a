//! `runner status <id> [--wait 30s]`

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::worker::RedisArgs;
use crate::queue::{Broker, Job, JobId, JobState};

#[derive(Args, Debug)]
pub struct StatusArgs {
    pub id: JobId,
    /// Wait up to this long for the job to end.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// Print the whole record as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub redis: RedisArgs,
}

pub async fn execute(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (broker, _) = args.redis.connect().await?;
    let job = match args.wait {
        Some(w) => broker.wait(args.id, w).await?,
        None => broker.get(args.id).await?,
    };
    let Some(job) = job else {
        eprintln!("no job {} (unknown, or its result expired)", args.id);
        return Ok(ExitCode::from(4));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        print_job(&job);
    }
    Ok(exit_code(&job))
}

pub fn print_job(job: &Job) {
    println!("id:       {}", job.id);
    println!("state:    {}", job.state);
    if let Some(t) = &job.task {
        println!("task:     {t}");
    }
    println!("queue:    {}", job.queue);
    println!("attempt:  {} of {}", job.attempt, job.retry.max_retries + 1);
    if let Some(w) = &job.worker {
        println!("worker:   {w}");
    }
    if let Some(p) = &job.progress {
        println!(
            "progress: {}/{}{}",
            p.done,
            p.total,
            p.message
                .as_deref()
                .map(|m| format!(" {m}"))
                .unwrap_or_default()
        );
    }
    if let Some(r) = &job.result {
        println!("result:   {r}");
    }
    if let Some(e) = &job.error {
        println!("error:    {}: {}", e.kind, e.message);
    }
}

/// 0 success, 1 failure, 2 revoked or expired, 3 not finished.
pub fn exit_code(job: &Job) -> ExitCode {
    ExitCode::from(match job.state {
        JobState::Success => 0,
        JobState::Failure => 1,
        JobState::Revoked | JobState::Expired => 2,
        _ => 3,
    })
}
