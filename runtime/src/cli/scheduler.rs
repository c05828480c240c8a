//! `runner scheduler --redis URL [--config runner.toml]`: fires the beats of
//! the config file (`[[beats]]`) and those created through the API, until
//! SIGTERM/SIGINT. Run as many as you like against one Redis: each due fire
//! is enqueued once (see [`crate::scheduler`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::worker::{RedisArgs, shutdown_signal};
use crate::queue::{Broker, Producer};
use crate::registry::Registry;
use crate::scheduler::{Scheduler, beats_from_toml, validate_config_beats};

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// `runner.toml`: its `[[beats]]` are scheduled (other sections are
    /// ignored here).
    #[arg(long, env = "RUNNER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub redis: RedisArgs,
}

pub async fn execute(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    // The file first: a bad beat is reported without waiting on Redis.
    let beats = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let beats = beats_from_toml(&text).with_context(|| format!("{}", path.display()))?;
            validate_config_beats(&beats)
                .with_context(|| format!("beats of {}", path.display()))?;
            beats
        }
        None => Vec::new(),
    };
    let url = args
        .redis
        .url
        .clone()
        .context("no Redis URL: pass --redis redis://host:port or set RUNNER_REDIS_URL")?;
    let (broker, registry) = args.redis.connect().await?;
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let registry: Arc<dyn Registry> = Arc::new(registry);
    let producer = Producer::new(broker, registry.clone());
    let scheduler = Scheduler::connect_redis(&url, producer, registry, beats)
        .await
        .with_context(|| match &args.config {
            Some(p) => format!("beats of {}", p.display()),
            None => "starting the scheduler".into(),
        })?;

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
    scheduler.run(shutdown_signal()).await;
    eprintln!("scheduler stopped");
    Ok(ExitCode::SUCCESS)
}
