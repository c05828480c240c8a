//! `runner worker [--config runner.toml] [-Q mail,ai] [-c 4]`: consume queues
//! until SIGTERM/SIGINT.
//!
//! Settings come as in every command (see [`crate::config`]): defaults, the
//! file's `[worker]`, the environment, then these flags. Without `-Q` the
//! worker consumes `[worker] queues` (or, without it, `default`, the
//! `[queues.*]` and the tasks' queues). The services of `[host]` are built
//! once and every job reaches them as far as its task binding's grants
//! allow (see [`crate::worker`]); `[host.kv]` without its own `redis_url`
//! lives in the broker's Redis, shared with every other process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::api::OpsState;
use crate::app::{self, Process};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Queues to consume, comma-separated (default: `[worker] queues`).
    #[arg(short = 'Q', long = "queues", value_delimiter = ',')]
    pub queues: Option<Vec<String>>,
    /// Jobs run at once, fixed (default: `[worker] concurrency`, else
    /// adaptive: from one per core up to `--max-concurrency` while the
    /// runs wait on the network and the cores are idle).
    #[arg(short = 'c', long)]
    pub concurrency: Option<usize>,
    /// The most jobs run at once when adapting (default: `[worker]
    /// max_concurrency`, else max(16, 8 per core)).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Jobs leased ahead of a free slot (default: `[worker] prefetch`, else
    /// adaptive: sized from the observed run times, up to 64 for fast
    /// jobs, none for slow ones). More means fewer Redis calls per job;
    /// 0 means a job is leased only when a slot is free.
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Lease length, at least 1s; a running job's lease is extended every
    /// third of it (default: `[worker] lease`, else 30s).
    #[arg(long, value_parser = crate::config::parse_bounded_duration)]
    pub lease: Option<Duration>,
    /// On SIGTERM, how long running jobs may finish before they are handed
    /// back (default: `[worker] grace`, else 30s).
    #[arg(long, value_parser = crate::config::parse_bounded_duration)]
    pub grace: Option<Duration>,
    /// At least 1s. Default: `[worker] heartbeat`, else 60s.
    #[arg(long, value_parser = crate::config::parse_bounded_duration)]
    pub heartbeat: Option<Duration>,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    /// Identifies this worker in listings (default: host-pid-random).
    #[arg(long)]
    pub id: Option<String>,
    /// `runner.toml`.
    #[arg(long, env = "RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL (overrides `[broker] redis_url` and RUNNER_REDIS_URL).
    #[arg(long = "redis")]
    pub redis: Option<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (`127.0.0.1:9101`;
    /// overrides `[worker] metrics_listen`).
    #[arg(long, env = "RUNNER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

impl WorkerArgs {
    /// Sets the keys these flags stand for.
    pub fn apply(&self, config: &mut Config) -> anyhow::Result<()> {
        if let Some(url) = &self.redis {
            config.broker.redis_url = Some(url.clone());
        }
        let w = &mut config.worker;
        if let Some(q) = &self.queues {
            w.queues = Some(q.clone());
        }
        if let Some(c) = self.concurrency {
            anyhow::ensure!(c > 0, "--concurrency must be at least 1");
            w.concurrency = Some(c);
        }
        if let Some(m) = self.max_concurrency {
            anyhow::ensure!(m > 0, "--max-concurrency must be at least 1");
            w.max_concurrency = Some(m);
        }
        if let Some(p) = self.prefetch {
            w.prefetch = Some(p);
        }
        let text = |d: Duration| humantime::format_duration(d).to_string();
        if let Some(d) = self.lease {
            w.lease = Some(text(d));
        }
        if let Some(d) = self.grace {
            w.grace = Some(text(d));
        }
        if let Some(d) = self.heartbeat {
            w.heartbeat = Some(text(d));
        }
        if let Some(id) = &self.id {
            w.id = Some(id.clone());
        }
        if let Some(l) = &self.metrics_listen {
            w.metrics_listen = Some(l.clone());
        }
        config.check()
    }
}

pub async fn execute(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    // From now on a stop is never lost, even while starting.
    app::listen_for_stop();
    // The file first: a bad file is reported without waiting on Redis.
    let mut config = Config::load_or_default(args.config.as_deref())?;
    args.apply(&mut config)?;
    app::require_redis(&config, "worker")?;
    let worker_config = app::worker_config(&config)?;
    let mut process = Process::new();
    let consuming = tokio::sync::watch::Sender::new(false);
    let ops = OpsState {
        consuming: Some(consuming.clone()),
        metrics: app::metrics_handle(),
        ..OpsState::default()
    };
    if let Some(listen) = &config.worker.metrics_listen {
        app::serve_ops(&mut process, listen, ops.clone()).await?;
    }
    // Started before Redis (a boot): wait for it rather than exit.
    if app::wait_for_redis(&config, app::shutdown_signal()).await? == app::RedisWait::Stopped {
        // A stop, not a failure (systemd would record a failed unit): the
        // metrics server ends as it does after a stop once started.
        process.run_until(std::future::ready(())).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let services = app::host_services(&config).await?;
    let (broker, registry) = app::connect(&config).await?;
    let producer = app::producer(&config, &broker, &registry)?;
    let sandbox = app::sandbox(&config, args.cache.dir(), Some(worker_config.most_slots()))?;
    let worker = app::worker(&config, &broker, &registry, &producer, &sandbox, services)?
        .with_consuming_flag(consuming);
    eprintln!(
        "worker {} consuming {} (concurrency {})",
        worker.id(),
        worker_config.queues.join(","),
        worker_config.slots_label()
    );
    let _ = ops.broker.set(broker.clone());
    // systemd (Type=notify) learns the worker is ready once it consumes.
    let mut ready = ops.consuming.as_ref().map(|c| c.subscribe());
    tokio::spawn(async move {
        if let Some(rx) = &mut ready
            && rx.wait_for(|c| *c).await.is_ok()
        {
            app::notify_systemd("READY=1");
        }
    });

    let stopping = process.stopping();
    process.spawn("worker", async move {
        let stats = worker.run(stopping).await?;
        eprintln!(
            "worker stopped: {} processed ({} succeeded, {} failed, {} retried), {} handed back",
            stats.processed, stats.succeeded, stats.failed, stats.retried, stats.handed_back
        );
        Ok(())
    });
    process.run_until_shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
