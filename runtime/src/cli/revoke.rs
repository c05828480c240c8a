//! `runner revoke <id> [--terminate]`

use std::process::ExitCode;

use clap::Args;

use super::worker::RedisArgs;
use crate::queue::{Broker, JobId, RevokeOutcome};

#[derive(Args, Debug)]
pub struct RevokeArgs {
    pub id: JobId,
    /// Also stop it if it is running.
    #[arg(long)]
    pub terminate: bool,
    #[command(flatten)]
    pub redis: RedisArgs,
}

pub async fn execute(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let (broker, _) = args.redis.connect().await?;
    let out = broker.revoke(args.id, args.terminate).await?;
    let (msg, code) = match out {
        RevokeOutcome::Revoked => ("revoked: it will never run".to_string(), 0),
        RevokeOutcome::Terminating => ("running: its worker was told to stop it".into(), 0),
        RevokeOutcome::WillNotRetry => (
            "running: it will finish but not be retried (add --terminate to stop it)".into(),
            0,
        ),
        RevokeOutcome::AlreadyFinal(s) => (format!("already finished: {s}"), 1),
        RevokeOutcome::NotFound => ("no such job (unknown, or its result expired)".into(), 4),
    };
    println!("{}: {msg}", args.id);
    Ok(ExitCode::from(code))
}
