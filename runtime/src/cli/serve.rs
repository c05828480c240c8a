//! `runner serve --config runner.toml [--listen ADDR] [--worker] [--scheduler]`:
//! the HTTP API, and optionally a worker and the scheduler in the same
//! process. In production each runs as its own process (`runner worker`,
//! `runner scheduler`) against one Redis.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::app::{self, Core, Process};
use crate::config::Config;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// `runner.toml`.
    #[arg(long, env = "RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides `[server] listen` and RUNNER_LISTEN).
    #[arg(long)]
    pub listen: Option<String>,
    /// Redis URL (overrides `[broker] redis_url` and RUNNER_REDIS_URL).
    #[arg(long)]
    pub redis: Option<String>,
    /// Also run a worker on the config's queues.
    #[arg(long)]
    pub worker: bool,
    /// Also run the scheduler loop (any number of replicas may run).
    #[arg(long)]
    pub scheduler: bool,
    #[command(flatten)]
    pub cache: super::CacheArgs,
}

pub async fn execute(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // From now on a stop is never lost, even while starting.
    app::listen_for_stop();
    let mut config = Config::load_or_default(args.config.as_deref())?;
    if let Some(l) = &args.listen {
        config.server.listen = l.clone();
    }
    if let Some(r) = &args.redis {
        config.broker.redis_url = Some(r.clone());
    }
    if config.broker.redis_url.is_none() && !args.worker {
        anyhow::bail!(
            "no Redis URL ([broker] redis_url, RUNNER_REDIS_URL or --redis): with the embedded \
             broker, jobs only run in this process; add --worker, or use `runner dev`"
        );
    }
    let auth = app::auth_from(&config)?;
    // Pools for as many runs as its worker may hold at once.
    let runs = match args.worker {
        true => Some(app::worker_config(&config)?.most_slots()),
        false => None,
    };
    let sandbox = app::sandbox(&config, args.cache.dir(), runs)?;
    // Started before Redis (a boot): wait for it rather than exit.
    if app::wait_for_redis(&config, app::shutdown_signal()).await? == app::RedisWait::Stopped {
        // A stop, not a failure (systemd would record a failed unit).
        return Ok(ExitCode::SUCCESS);
    }
    let core = Core::open(&config, sandbox).await?;
    let bound = core.apply_tasks(&config).await?;
    if !bound.is_empty() {
        eprintln!("bound from config: {}", bound.join(", "));
    }
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;

    let mut process = Process::new();
    if args.worker {
        let services = app::host_services(&config).await?;
        let worker = core.worker(&config, services)?;
        let stopping = process.stopping();
        process.spawn(
            "worker",
            async move { worker.run(stopping).await.map(drop) },
        );
    }
    if args.scheduler {
        let sched = core.scheduler.clone();
        let stopping = process.stopping();
        process.spawn("scheduler", async move {
            sched.run(stopping).await;
            Ok(())
        });
    }
    let ctx = app::api_context(&core, &config, auth)?;
    eprintln!(
        "runner API listening on http://{addr} ({} broker)",
        core.broker.kind()
    );
    eprintln!("dashboard: http://{addr}/dashboard (give it a token: /dashboard#token=...)");
    let stopping = process.stopping();
    process.spawn("API server", async move {
        crate::api::serve(listener, ctx, stopping).await?;
        Ok(())
    });
    // Listening, and Redis answered: systemd (Type=notify) may go on.
    app::notify_systemd("READY=1");
    process.run_until_shutdown().await?;
    Ok(ExitCode::SUCCESS)
}
