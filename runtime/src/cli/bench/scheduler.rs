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
use std::net::TcpListener;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::queue::{Broker, Producer, RedisBroker, SettleRequest};
use crate::registry::{RedisRegistry, Registry, TaskBinding};
use crate::scheduler::{Beat, Scheduler};

const QUEUE: &str = "bench-beats";
const TASK: &str = "bench-tick";
/// Never loaded: no worker runs in this benchmark.
const MODULE: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Args, Debug)]
pub struct SchedulerBench {
    /// How long the second-level beats fire.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Beats firing every second.
    #[arg(long, default_value_t = 5)]
    pub beats: usize,
    /// Scheduler replicas racing on the one Redis.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// How long to watch the idle schedulers.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

/// A `redis-server` of our own, killed on drop.
struct RedisChild {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisChild {
    fn start(bin: &str) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!(
            "runner-bench-sched-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin} (install redis-server, see scripts/setup)"))?;
        let me = RedisChild { child, port, dir };
        let client = redis::Client::open(me.url())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("redis-server did not come up on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `total_commands_processed`. Reading it is itself one command, which the
/// next reading counts: callers subtract it.
async fn total_commands(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no total_commands_processed in INFO")
}

fn bar(len: Duration, msg: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len.as_secs());
    bar.set_style(
        ProgressStyle::with_template("  {msg:<16} [{bar:30}] {pos}/{len} s")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

async fn wait_with_bar(len: Duration, msg: &'static str) {
    let b = bar(len, msg);
    let end = tokio::time::Instant::now() + len;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - tokio::time::Instant::now())).await;
        b.inc(1);
    }
    b.finish_and_clear();
}

fn percentile_ms(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn execute(args: SchedulerBench) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(args.beats >= 1, "--beats must be at least 1");
    let redis = RedisChild::start(&args.redis_server)?;
    let url = redis.url();
    let mut stats_conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;

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

    // --- active: second-level beats.
    let names: Vec<String> = (0..args.beats).map(|i| format!("bench-{i}")).collect();
    let before = total_commands(&mut stats_conn).await?;
    let started = Utc::now();
    for n in &names {
        schedulers[0]
            .put(Beat::cron(n.as_str(), TASK, "* * * * * *"))
            .await?;
    }
    wait_with_bar(args.duration, "firing").await;
    for n in &names {
        schedulers[0].delete(n).await?;
    }
    let stopped = Utc::now();
    let after = total_commands(&mut stats_conn).await?;
    // Let an enqueue in flight land.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::connect(&url).await?);
    let mut jobs = Vec::new();
    loop {
        let reply = broker
            .settle(SettleRequest {
                queue: QUEUE.into(),
                worker: "bench-counter".into(),
                completions: vec![],
                fetch: 10_000,
                due_check: false,
                holds_leases: false,
                lease: Duration::from_secs(3600),
            })
            .await?;
        if reply.deliveries.is_empty() {
            break;
        }
        jobs.extend(reply.deliveries.into_iter().map(|d| d.job));
    }
    let mut delays = Vec::with_capacity(jobs.len());
    let mut per_fire: BTreeMap<(String, DateTime<Utc>), usize> = BTreeMap::new();
    for j in &jobs {
        let (Some(beat), Some(due)) = (&j.schedule, j.scheduled_for) else {
            continue;
        };
        *per_fire.entry((beat.clone(), due)).or_default() += 1;
        delays.push((j.created_at - due).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    delays.sort_by(|a, b| a.total_cmp(b));
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
    let fires = per_fire.len();
    let window = (stopped - started).num_milliseconds() as f64 / 1000.0;
    println!(
        "  fires         {fires} in {window:.1} s ({:.1}/s), {duplicates} duplicates, {gaps} missing seconds",
        fires as f64 / window
    );
    println!(
        "  fire delay    due -> enqueued: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (over {} fires)",
        percentile_ms(&delays, 50.0),
        percentile_ms(&delays, 99.0),
        delays.last().copied().unwrap_or(f64::NAN),
        delays.len()
    );
    // The second INFO counted the first; puts and deletes are included.
    let active = after.saturating_sub(before + 1);
    println!(
        "  Redis cmds    {:.1} per fire while firing ({active} commands, {} replicas racing for each fire)",
        active as f64 / fires.max(1) as f64,
        args.replicas
    );

    // --- idle: one beat months away.
    schedulers[0]
        .put(Beat::cron("bench-yearly", TASK, "0 0 1 1 *"))
        .await?;
    // Let every replica reload after the change before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_before = total_commands(&mut stats_conn).await?;
    wait_with_bar(args.idle, "idle").await;
    let idle_after = total_commands(&mut stats_conn).await?;
    let idle_cmds = idle_after.saturating_sub(idle_before + 1);
    let minutes = args.idle.as_secs_f64() / 60.0;
    println!(
        "  idle          {:.2} Redis commands per minute per scheduler ({idle_cmds} in {:.0} s from {} replicas; budget <= 2)",
        idle_cmds as f64 / minutes / args.replicas as f64,
        args.idle.as_secs_f64(),
        args.replicas
    );

    for (stop, handle) in loops {
        let _ = stop.send(());
        let _ = handle.await;
    }
    Ok(if duplicates == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {duplicates} duplicate fires");
        ExitCode::FAILURE
    })
}
