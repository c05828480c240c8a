//! `runner worker -Q mail,ai -c 4 [--config runner.toml]`: consume queues
//! until SIGTERM/SIGINT.
//!
//! With `--config`, the services of `[host]` are built once and every job
//! reaches them as far as its task binding's grants allow (see
//! [`crate::worker`]); without it, no service is configured and a task's
//! host calls answer `unavailable`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::queue::Producer;
use crate::queue::{Broker, RedisBroker};
use crate::registry::{RedisRegistry, Registry};
use crate::sandbox::host::services::HostServices;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::worker::{Worker, WorkerConfig};

/// Where the queues are. Shared by the subcommands that talk to Redis.
#[derive(Args, Debug, Clone)]
pub struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0.
    #[arg(long = "redis", env = "RUNNER_REDIS_URL")]
    pub url: Option<String>,
}

impl RedisArgs {
    pub async fn connect(&self) -> anyhow::Result<(RedisBroker, RedisRegistry)> {
        let url = self.url.as_deref().context(
            "no Redis URL: pass --redis redis://host:port or set RUNNER_REDIS_URL \
             (the embedded broker only exists inside one process, e.g. `runner dev`)",
        )?;
        let broker = RedisBroker::connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let registry = RedisRegistry::new(broker.connection());
        Ok((broker, registry))
    }
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Queues to consume, comma-separated.
    #[arg(
        short = 'Q',
        long = "queues",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub queues: Vec<String>,
    /// Jobs run at once (default: one per core).
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// Jobs leased ahead of a free slot (default: as many as the
    /// concurrency). More means fewer Redis calls per job; 0 means a job is
    /// leased only when a slot is free.
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Lease length; a running job's lease is extended every third of it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// On SIGTERM, how long running jobs may finish before they are handed back.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Where compiled modules are cached between runs.
    #[arg(long, env = "RUNNER_CACHE_DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Identifies this worker in listings (default: host-pid-random).
    #[arg(long)]
    pub id: Option<String>,
    /// `runner.toml`: its `[host]` section configures the services
    /// (mail, http, pdf, files, kv) that granted tasks may use, `[queues]`
    /// the rate limits of the child jobs tasks enqueue.
    #[arg(long, env = "RUNNER_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub redis: RedisArgs,
}

pub async fn execute(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    // Before connecting: a bad file is reported without waiting on Redis.
    // The environment overrides (RUNNER_SMTP_*, ...) apply as everywhere.
    let config = crate::config::Config::load_or_default(args.config.as_deref())?;
    let services = HostServices::from_config(&config.host)
        .await
        .context("[host]")?;
    let (broker, registry) = args.redis.connect().await?;
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let registry: Arc<dyn Registry> = Arc::new(registry);
    // Child jobs (`jobs.enqueue`) observe the queues' global rate limits.
    let mut producer = Producer::new(broker.clone(), registry.clone());
    for (queue, spec) in config.queue_limits() {
        producer = producer
            .with_queue_limit(queue, spec)
            .with_context(|| format!("queues.{queue}.rate_limit"))?;
    }
    let mut cfg = WorkerConfig {
        queues: args.queues.clone(),
        lease: args.lease,
        grace: args.grace,
        heartbeat: args.heartbeat,
        id: args.id.clone(),
        ..WorkerConfig::default()
    };
    if let Some(c) = args.concurrency {
        anyhow::ensure!(c > 0, "--concurrency must be at least 1");
        cfg.concurrency = c;
    }
    cfg.prefetch = args.prefetch.unwrap_or(cfg.concurrency);
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: args.cache_dir.clone(),
        max_concurrent_runs: (cfg.concurrency as u32).max(1),
        ..SandboxConfig::default()
    })?;
    let worker = Worker::new(broker, registry, sandbox, services, cfg).with_producer(producer);
    eprintln!("worker {} consuming {}", worker.id(), args.queues.join(","));
    let stats = worker.run(shutdown_signal()).await?;
    eprintln!(
        "worker stopped: {} processed ({} succeeded, {} failed, {} retried), {} handed back",
        stats.processed, stats.succeeded, stats.failed, stats.retried, stats.handed_back
    );
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            // Without signal handlers there is no graceful way to stop.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
