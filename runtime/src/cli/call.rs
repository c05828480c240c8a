//! `runner call <task> --input '{..}' [--queue q] [--countdown 10] [--wait 30s]`

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::worker::RedisArgs;
use crate::queue::{Broker, EnqueueRequest, Producer};

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The task name.
    pub task: String,
    /// JSON input (`@file.json` reads a file).
    #[arg(long, default_value = "{}")]
    pub input: String,
    #[arg(long, short = 'Q')]
    pub queue: Option<String>,
    /// Seconds to wait before the job may run.
    #[arg(long, allow_hyphen_values = true)]
    pub countdown: Option<f64>,
    /// Seconds after which the job is dropped unrun.
    #[arg(long, allow_hyphen_values = true)]
    pub expires: Option<f64>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait this long for the result (e.g. 30s) and print it.
    #[arg(long, value_parser = humantime::parse_duration, num_args = 0..=1, default_missing_value = "60s")]
    pub wait: Option<Duration>,
    #[command(flatten)]
    pub redis: RedisArgs,
}

pub async fn execute(args: CallArgs) -> anyhow::Result<ExitCode> {
    let input = match args.input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => args.input.clone(),
    };
    let (broker, registry) = args.redis.connect().await?;
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let producer = Producer::new(broker.clone(), Arc::new(registry));
    let req = EnqueueRequest {
        task: Some(args.task.clone()),
        input,
        queue: args.queue.clone(),
        countdown_secs: args.countdown,
        expires_in_secs: args.expires,
        idempotency_key: args.idempotency_key.clone(),
        ..Default::default()
    };
    let enq = producer.enqueue(req).await?;
    let id = enq.job.id;
    if !enq.created {
        eprintln!("an earlier job with this idempotency key exists");
    }
    let Some(wait) = args.wait else {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!("{id}");
    let job = broker
        .wait(id, wait)
        .await?
        .context("the job disappeared")?;
    super::status::print_job(&job);
    Ok(super::status::exit_code(&job))
}
