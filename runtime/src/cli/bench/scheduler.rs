//! `runner bench scheduler`: the scheduler's figures against a Redis it
//! starts itself (a fresh `redis-server` on a free loopback port), with
//! several replicas racing in this process (each with its own connections,
//! as separate processes would have):
//!
//! - fire delay, due time -> job enqueued (the job record is made right
//!   before the enqueue script runs; `created_at - scheduled_for`), p50/p99
//!   over every fire of `--beats` second-level beats for `--duration`;
//! - fires, duplicates and gaps (exactly once across the replicas);
//! - Redis commands per fire while firing (`total_commands_processed`
//!   delta; commands inside scripts count);
//! - Redis commands per minute from the idle schedulers, while the only
//!   beat is months away.
//!
//! No worker runs: jobs are leased and counted after the active phase.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;

use super::{CommandCount, Commands, RedisChild, percentile, wait_with_bar};

use crate::producer::Producer;
use crate::queue::{Broker, RedisBroker, SettleRequest};
use crate::registry::{ModuleHash, RedisRegistry, Registry, TaskBinding};
use crate::scheduler::{Beat, Scheduler};

const QUEUE: &str = "bench-beats";
const TASK: &str = "bench-tick";
/// Never loaded: no worker runs in this benchmark.
const MODULE: ModuleHash = ModuleHash([0; 32]);

#[derive(Args, Debug)]
pub struct SchedulerBench {
    /// How long the second-level beats fire.
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_bounded_duration)]
    pub duration: Duration,
    /// Beats firing every second.
    #[arg(long, default_value_t = 5)]
    pub beats: usize,
    /// Scheduler replicas racing on the one Redis.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// How long to watch the idle schedulers.
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_bounded_duration)]
    pub idle: Duration,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

pub async fn execute(args: SchedulerBench) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(args.beats >= 1, "--beats must be at least 1");
    let redis = RedisChild::start(&args.redis_server)?;
    let url = redis.url();
    let mut count = CommandCount::connect(&url).await?;

    let registry = RedisRegistry::connect(&url).await?;
    let mut binding = TaskBinding::new(TASK, MODULE);
    binding.queue = QUEUE.into();
    registry.bind(binding).await?;

    let mut schedulers = Vec::new();
    let mut loops = Vec::new();
    for _ in 0..args.replicas {
        let broker: Arc<dyn Broker> = Arc::new(RedisBroker::connect(&url).await?);
        let registry: Arc<dyn Registry> = Arc::new(RedisRegistry::connect(&url).await?);
        let producer = Producer::new(broker, registry.clone());
        let s = Scheduler::connect_redis(&url, producer, registry, Vec::new()).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let looping = s.clone();
        loops.push((
            stop_tx,
            tokio::spawn(async move {
                looping
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
            }),
        ));
        schedulers.push(s);
    }

    println!("runner bench scheduler");
    println!(
        "  setup         {} replicas, {} beats every second for {:.0} s, redis on port {}",
        args.replicas,
        args.beats,
        args.duration.as_secs_f64(),
        redis.port
    );
    let firing = measure_firing(&args, &schedulers[0], &url, &mut count).await?;
    firing.print(args.replicas);
    let idle = measure_idle(&args, &schedulers[0], &mut count).await?;
    idle.print(&args);

    for (stop, handle) in loops {
        let _ = stop.send(());
        let _ = handle.await;
    }
    Ok(if firing.duplicates == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {} duplicate fires", firing.duplicates);
        ExitCode::FAILURE
    })
}

/// `--beats` second-level beats firing for `--duration`.
struct Firing {
    fires: usize,
    duplicates: usize,
    /// Seconds with no fire between two fires of one beat.
    gaps: usize,
    /// Of the firing phase.
    window_secs: f64,
    /// Due time -> job enqueued, in ms, sorted.
    delays_ms: Vec<f64>,
    commands: Commands,
}

impl Firing {
    fn print(&self, replicas: usize) {
        println!(
            "  fires         {} in {:.1} s ({:.1}/s), {} duplicates, {} missing seconds",
            self.fires,
            self.window_secs,
            self.fires as f64 / self.window_secs,
            self.duplicates,
            self.gaps
        );
        if !self.delays_ms.is_empty() {
            println!(
                "  fire delay    due -> enqueued: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (over {} fires)",
                percentile(&self.delays_ms, 50.0),
                percentile(&self.delays_ms, 99.0),
                self.delays_ms.last().copied().unwrap_or(f64::NAN),
                self.delays_ms.len()
            );
        }
        // Puts and deletes of the beats are included.
        println!(
            "  Redis cmds    {:.1} per fire while firing ({} commands, {replicas} replicas racing for each fire)",
            self.commands.total as f64 / self.fires.max(1) as f64,
            self.commands.total,
        );
    }
}

async fn measure_firing(
    args: &SchedulerBench,
    scheduler: &Scheduler,
    url: &str,
    count: &mut CommandCount,
) -> anyhow::Result<Firing> {
    let names: Vec<String> = (0..args.beats).map(|i| format!("bench-{i}")).collect();
    count.reset().await?;
    let started = Utc::now();
    for n in &names {
        scheduler
            .put(Beat::cron(n.as_str(), TASK, "* * * * * *"))
            .await?;
    }
    wait_with_bar(args.duration, "firing").await;
    for n in &names {
        scheduler.delete(n).await?;
    }
    let stopped = Utc::now();
    let commands = count.read().await?;
    // Let an enqueue in flight land.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::connect(url).await?);
    let mut jobs = Vec::new();
    loop {
        let reply = broker
            .settle(SettleRequest {
                queue: QUEUE.into(),
                worker: "bench-counter".into(),
                completions: Arc::from([]),
                fetch: 10_000,
                due_check: false,
                holds_leases: false,
                lease: Duration::from_secs(3600),
                prioritized: true,
                idle: 0,
                registered: false,
            })
            .await?;
        if reply.deliveries.is_empty() {
            break;
        }
        jobs.extend(reply.deliveries.into_iter().map(|d| d.job));
    }
    let mut delays_ms = Vec::with_capacity(jobs.len());
    let mut per_fire: BTreeMap<(String, DateTime<Utc>), usize> = BTreeMap::new();
    for j in &jobs {
        let (Some(beat), Some(due)) = (&j.schedule, j.scheduled_for) else {
            continue;
        };
        *per_fire.entry((beat.clone(), due)).or_default() += 1;
        delays_ms.push((j.created_at - due).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    delays_ms.sort_by(|a, b| a.total_cmp(b));
    let duplicates: usize = per_fire.values().map(|n| n - 1).sum();
    let mut gaps = 0usize;
    for n in &names {
        let dues: Vec<DateTime<Utc>> = per_fire
            .keys()
            .filter(|(b, _)| b == n)
            .map(|(_, d)| *d)
            .collect();
        gaps += dues
            .windows(2)
            .map(|w| ((w[1] - w[0]).num_seconds() - 1).max(0) as usize)
            .sum::<usize>();
    }
    Ok(Firing {
        fires: per_fire.len(),
        duplicates,
        gaps,
        window_secs: (stopped - started).num_milliseconds() as f64 / 1000.0,
        delays_ms,
        commands,
    })
}

/// What idle schedulers cost Redis while the only beat is months away.
struct IdleSchedulers {
    commands: Commands,
}

impl IdleSchedulers {
    fn print(&self, args: &SchedulerBench) {
        let minutes = args.idle.as_secs_f64() / 60.0;
        println!(
            "  idle          {:.2} Redis commands per minute per scheduler ({} in {:.0} s from {} replicas; budget <= 2)",
            self.commands.total as f64 / minutes / args.replicas as f64,
            self.commands.total,
            args.idle.as_secs_f64(),
            args.replicas
        );
    }
}

async fn measure_idle(
    args: &SchedulerBench,
    scheduler: &Scheduler,
    count: &mut CommandCount,
) -> anyhow::Result<IdleSchedulers> {
    scheduler
        .put(Beat::cron("bench-yearly", TASK, "0 0 1 1 *"))
        .await?;
    // Let every replica reload after the change before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    count.reset().await?;
    wait_with_bar(args.idle, "idle").await;
    Ok(IdleSchedulers {
        commands: count.read().await?,
    })
}
