//! `runner bench queue`: the queue engine's figures against a Redis it
//! starts itself (a fresh `redis-server` on a free loopback port):
//!
//! - jobs/s for N no-op WASM jobs (the `hello` example) with one worker, the
//!   producer enqueueing in batches;
//! - Redis commands per job from enqueue to stored result
//!   (`total_commands_processed` delta over the run; commands run inside
//!   Lua scripts are counted by Redis itself, and the worker's start-up and
//!   heartbeats are included);
//! - enqueue-to-result round trip p50/p99 for single jobs on an idle worker;
//! - Redis commands per minute from one idle worker.
//!
//! Completion is observed through the broker's pub/sub events, which Redis
//! does not count as commands, so watching does not inflate the figures.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::queue::{Broker, EnqueueRequest, JobState, Producer, RedisBroker, RetryPolicy};
use crate::registry::{RedisRegistry, Registry, TaskBinding};
use crate::sandbox::host::HostServices;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::worker::{Worker, WorkerConfig};

#[derive(Args, Debug)]
pub struct QueueBench {
    /// Jobs for the throughput figure.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Jobs per enqueue call.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Worker concurrency (default: one per core).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Jobs the worker leases ahead of a free slot.
    #[arg(long, default_value_t = 8)]
    pub prefetch: usize,
    /// Sequential single jobs for the round-trip figure.
    #[arg(long, default_value_t = 300)]
    pub single: usize,
    /// How long to watch the idle worker.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// The component to run (default: the `hello` example).
    #[arg(long)]
    pub module: Option<PathBuf>,
    #[arg(long, default_value = r#"{"name":"bench"}"#)]
    pub input: String,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

struct RedisChild {
    child: Child,
    port: u16,
    _dir: tempfile_dir::Dir,
}

/// A temp dir without a dev-dependency: removed on drop.
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl RedisChild {
    fn start(bin: &str) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir =
            std::env::temp_dir().join(format!("runner-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin} (install redis-server, see scripts/setup)"))?;
        let me = RedisChild {
            child,
            port,
            _dir: tempfile_dir::Dir(dir),
        };
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
    }
}

/// Resets Redis's counters; the next [`commands_since_reset`] counts from here.
async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await?;
    Ok(())
}

/// Commands processed since the last reset, not counting the reset itself.
async fn commands_since_reset(
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<(u64, String)> {
    let info: String = redis::cmd("INFO").arg("all").query_async(conn).await?;
    let total = info
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .context("no total_commands_processed in INFO")?;
    let mut stats: Vec<(u64, String)> = info
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, fields) = rest.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((calls, name.to_string()))
        })
        .filter(|(_, n)| n != "config|resetstat" && n != "config")
        .collect();
    stats.sort_by(|a, b| b.cmp(a));
    let breakdown = stats
        .iter()
        .map(|(c, n)| format!("{n}={c}"))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((total.saturating_sub(1), breakdown))
}

pub async fn execute(args: QueueBench) -> anyhow::Result<ExitCode> {
    let redis = RedisChild::start(&args.redis_server)?;
    let url = redis.url();
    let stats_client = redis::Client::open(url.clone())?;
    let mut stats = stats_client.get_multiplexed_async_connection().await?;

    let producer_broker = RedisBroker::connect(&url).await?;
    let registry: Arc<dyn Registry> = Arc::new(RedisRegistry::new(producer_broker.connection()));
    let module_path = args
        .module
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("RUNNER_GUEST_DIR")).join("hello.wasm"));
    let bytes = std::fs::read(&module_path)
        .with_context(|| format!("reading {}", module_path.display()))?;
    let hash = registry.put_module(&bytes).await?;
    let mut binding = TaskBinding::new("bench", hash);
    binding.queue = "bench".into();
    binding.retry = RetryPolicy::none();
    registry.bind(binding).await?;
    let broker: Arc<dyn Broker> = Arc::new(producer_broker);
    let producer = Producer::new(broker.clone(), registry.clone());
    // Watch results through pub/sub (not counted as commands).
    let mut events = broker.subscribe().await?;

    let concurrency = args
        .concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    println!(
        "runner bench queue: {} jobs of {} (batches of {}), one worker, concurrency {}, prefetch {}",
        args.jobs,
        module_path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?"),
        args.batch,
        concurrency,
        args.prefetch
    );

    // --- throughput and commands per job -------------------------------
    reset_stats(&mut stats).await?;
    let t0 = Instant::now();
    let bar = ProgressBar::new(args.jobs as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:10} {bar:40} {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("enqueue");
    let mut left = args.jobs;
    while left > 0 {
        let n = left.min(args.batch.max(1));
        let reqs = (0..n)
            .map(|_| EnqueueRequest::task("bench", args.input.clone()))
            .collect();
        producer.enqueue_batch(reqs).await?;
        left -= n;
        bar.inc(n as u64);
    }
    let enqueue_time = t0.elapsed();

    let worker_broker: Arc<dyn Broker> = Arc::new(RedisBroker::connect(&url).await?);
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_runs: (concurrency as u32).max(1),
        ..SandboxConfig::default()
    })?;
    // Compile before the clock starts: compiling is the sandbox's figure.
    let bytes_for_load = bytes.clone();
    let sb = sandbox.clone();
    tokio::task::spawn_blocking(move || sb.load(&bytes_for_load).map(|_| ()))
        .await?
        .map_err(|e| anyhow::anyhow!("loading the module: {e}"))?;
    let cfg = WorkerConfig {
        queues: vec!["bench".into()],
        concurrency,
        prefetch: args.prefetch,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        worker_broker,
        registry.clone(),
        sandbox,
        HostServices::default(),
        cfg,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));

    bar.set_position(0);
    bar.set_message("process");
    let t1 = Instant::now();
    let mut done = 0usize;
    let mut failed = 0usize;
    while done < args.jobs {
        match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Ok(ev)) if ev.state.is_final() => {
                done += 1;
                if ev.state != JobState::Success {
                    failed += 1;
                }
                if done.is_multiple_of(500) {
                    bar.set_position(done as u64);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                bail!("the event stream lagged by {n}: cannot count results")
            }
            Ok(Err(e)) => bail!("event stream ended: {e}"),
            Err(_) => bail!("no result for 60 s ({done} of {} done)", args.jobs),
        }
    }
    let process_time = t1.elapsed();
    let total_time = t0.elapsed();
    bar.finish_and_clear();
    let (commands, breakdown) = commands_since_reset(&mut stats).await?;
    if failed > 0 {
        bail!("{failed} jobs did not succeed");
    }
    println!("throughput");
    println!(
        "  enqueue:            {:>10.0} jobs/s ({:.2?} for {})",
        args.jobs as f64 / enqueue_time.as_secs_f64(),
        enqueue_time,
        args.jobs
    );
    println!(
        "  process:            {:>10.0} jobs/s ({:.2?}, worker start to last result)",
        args.jobs as f64 / process_time.as_secs_f64(),
        process_time
    );
    println!(
        "  end to end:         {:>10.0} jobs/s ({:.2?})",
        args.jobs as f64 / total_time.as_secs_f64(),
        total_time
    );
    println!("redis commands");
    println!(
        "  per job:            {:>10.2} ({} commands for {} jobs, enqueue to stored result; budget <= 4)",
        commands as f64 / args.jobs as f64,
        commands,
        args.jobs
    );
    println!("  by command:         {breakdown}");

    // --- single-job round trip --------------------------------------------
    // Let the worker settle into idle first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reset_stats(&mut stats).await?;
    let mut rtts = Vec::with_capacity(args.single);
    for _ in 0..args.single {
        let t = Instant::now();
        let id = producer
            .enqueue(EnqueueRequest::task("bench", args.input.clone()))
            .await?
            .job
            .id;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Ok(ev)) if ev.id == id && ev.state.is_final() => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("event stream: {e}"),
                Err(_) => bail!("single job {id} did not finish in 30 s"),
            }
        }
        rtts.push(t.elapsed());
    }
    let (single_cmds, single_breakdown) = commands_since_reset(&mut stats).await?;
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "single jobs (enqueue -> result event, idle worker, {} sequential)",
        args.single
    );
    println!("  p50:                {:>10.2?}", pct(0.50));
    println!("  p99:                {:>10.2?}", pct(0.99));
    println!(
        "  commands per job:   {:>10.2} (no batching at all)",
        single_cmds as f64 / args.single as f64
    );
    println!("  by command:         {single_breakdown}");

    // --- idle worker ----------------------------------------------------------
    tokio::time::sleep(Duration::from_millis(500)).await;
    reset_stats(&mut stats).await?;
    let idle_bar = ProgressBar::new(args.idle.as_secs());
    idle_bar.set_message("idle");
    let t = Instant::now();
    while t.elapsed() < args.idle {
        tokio::time::sleep(Duration::from_secs(1).min(args.idle)).await;
        idle_bar.set_position(t.elapsed().as_secs());
    }
    idle_bar.finish_and_clear();
    let (idle_cmds, idle_breakdown) = commands_since_reset(&mut stats).await?;
    let per_min = idle_cmds as f64 * 60.0 / args.idle.as_secs_f64();
    println!("idle worker ({:?})", args.idle);
    println!("  commands per minute:{per_min:>10.2} ({idle_cmds} commands; budget <= 2)");
    if !idle_breakdown.is_empty() {
        println!("  by command:         {idle_breakdown}");
    }

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker_task).await;
    Ok(ExitCode::SUCCESS)
}
