//! `runner scheduler [--config runner.toml] [--redis URL]`: fires the beats
//! of the config file (`[[beats]]`) and those created through the API,
//! until SIGTERM/SIGINT. Run as many as you like against one Redis: each
//! due fire is enqueued once (see [`crate::scheduler`]). Jobs it enqueues
//! carry their queue's rate limit (`[queues.NAME] rate_limit`), as jobs
//! from the API do.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::app::{self, Process};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// `runner.toml`: its `[[beats]]` are scheduled, `[broker]` says where
    /// Redis is and `[queues]` gives the rate limits of what is fired.
    #[arg(long, env = "RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL (overrides `[broker] redis_url` and RUNNER_REDIS_URL).
    #[arg(long = "redis")]
    pub redis: Option<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (`127.0.0.1:9102`;
    /// overrides `[scheduler] metrics_listen`).
    #[arg(long, env = "RUNNER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

pub async fn execute(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    // From now on a stop is never lost, even while starting.
    app::listen_for_stop();
    // The file first: a bad beat is reported without waiting on Redis.
    let mut config = Config::load_or_default(args.config.as_deref())?;
    if let Some(url) = &args.redis {
        config.broker.redis_url = Some(url.clone());
    }
    if let Some(l) = &args.metrics_listen {
        config.scheduler.metrics_listen = Some(l.clone());
    }
    app::require_redis(&config, "scheduler")?;
    let mut process = Process::new();
    let ops = crate::api::OpsState {
        metrics: app::metrics_handle(),
        ..crate::api::OpsState::default()
    };
    if let Some(listen) = &config.scheduler.metrics_listen {
        app::serve_ops(&mut process, listen, ops.clone()).await?;
    }
    // Started before Redis (a boot): wait for it rather than exit.
    if app::wait_for_redis(&config, app::shutdown_signal()).await? == app::RedisWait::Stopped {
        // A stop, not a failure (systemd would record a failed unit): the
        // metrics server ends as it does after a stop once started.
        process.run_until(std::future::ready(())).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let (broker, registry) = app::connect(&config).await?;
    let producer = app::producer(&config, &broker, &registry)?;
    let scheduler = app::scheduler(&config, &producer, &registry).await?;

    let list = scheduler.list().await.context("reading beats")?;
    eprintln!("scheduler: {} beat(s)", list.len());
    for s in &list {
        let rule = s
            .beat
            .cron
            .clone()
            .or_else(|| s.beat.every.as_ref().map(|e| format!("every {e}")))
            .unwrap_or_default();
        let next = match (&s.next_fire, s.beat.enabled) {
            (_, false) => "disabled".to_string(),
            (Some(n), true) => format!("next {} ({} UTC)", n.local, n.utc.format("%F %T")),
            (None, true) => "never due".to_string(),
        };
        eprintln!(
            "  {:<24} {:<20} {} [{}] {next}",
            s.beat.name, rule, s.beat.timezone, s.beat.task
        );
    }
    let _ = ops.broker.set(broker.clone());
    app::notify_systemd("READY=1");
    let stopping = process.stopping();
    process.spawn("scheduler", async move {
        scheduler.run(stopping).await;
        eprintln!("scheduler stopped");
        Ok(())
    });
    process.run_until_shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
