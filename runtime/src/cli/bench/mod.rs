//! `runner bench <target>`: commands that measure and print figures. Tests
//! never assert speed; these are how speed is checked.
//!
//! - `sandbox`: instantiate+run latency, runs/s, fuel-metering overhead;
//! - `queue`: jobs/s, Redis commands per job, round trip, idle worker cost;
//!   with `--cluster`, the same on local Redis Clusters (`cluster.rs`);
//! - `scheduler`: fire delay, exactly-once across replicas, idle cost;
//! - `workflow`: Redis commands per member job of a workflow of batches.
//!
//! Each measures first and prints after, from a figures struct, so that a
//! figure is computed in one place whatever prints it. The benches that
//! need Redis start their own ([`RedisChild`]) and count its commands
//! ([`CommandCount`]).

mod cluster;
mod queue;
mod sandbox;
mod scaling;
mod scheduler;
mod workflow;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::broadcast;

use crate::producer::{EnqueueRequest, Producer};
use crate::queue::{JobEvent, JobState};

pub use queue::QueueBench;
pub use sandbox::SandboxBench;
pub use scheduler::SchedulerBench;
pub use workflow::WorkflowBench;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Subcommand, Debug)]
pub enum BenchTarget {
    /// Instantiate+run latency, runs per second, fuel-metering overhead.
    Sandbox(SandboxBench),
    /// Queue jobs/s, Redis commands per job, round trip, idle worker cost.
    Queue(QueueBench),
    /// Scheduler fire delay, exactly-once across replicas, idle Redis cost.
    Scheduler(SchedulerBench),
    /// A workflow of batches (chain of groups, then a finaliser): Redis
    /// commands per member job.
    Workflow(WorkflowBench),
}

pub async fn execute(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.target {
        BenchTarget::Sandbox(bench) => sandbox::execute(bench).await,
        BenchTarget::Queue(bench) => queue::execute(bench).await,
        BenchTarget::Scheduler(bench) => scheduler::execute(bench).await,
        BenchTarget::Workflow(bench) => workflow::execute(bench).await,
    }
}

/// The component a bench measures: `--module FILE`, or the built-in
/// `hello` (embedded in the binary, so that the bench runs wherever the
/// binary does). Returns its bytes and how to name it.
fn bench_module(module: Option<&Path>) -> anyhow::Result<(Vec<u8>, String)> {
    match module {
        Some(path) => Ok((
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        )),
        None => Ok((
            crate::builtin::module("hello")
                .context("the built-in hello is missing from this binary")?
                .to_vec(),
            "builtin:hello".to_string(),
        )),
    }
}

/// A worker on Redis at `url` for queue `bench`, `concurrency` runs at
/// once, with `module` compiled before it is returned (compiling is the
/// sandbox bench's figure, not a queue's).
async fn bench_worker(
    url: &str,
    registry: std::sync::Arc<dyn crate::registry::Registry>,
    module: Vec<u8>,
    concurrency: Option<usize>,
    prefetch: crate::worker::Prefetch,
) -> anyhow::Result<crate::worker::Worker> {
    use crate::sandbox::{Sandbox, SandboxConfig};
    let cfg = bench_worker_config(concurrency, prefetch);
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_runs: u32::try_from(cfg.most_slots().max(1)).unwrap_or(u32::MAX),
        ..SandboxConfig::default()
    })?;
    let sb = sandbox.clone();
    tokio::task::spawn_blocking(move || sb.load(&module).map(|_| ()))
        .await?
        .map_err(|e| anyhow::anyhow!("loading the module: {e}"))?;
    Ok(crate::worker::Worker::new(
        std::sync::Arc::new(crate::queue::RedisBroker::connect(url).await?),
        registry,
        sandbox,
        crate::sandbox::host::HostServices::default(),
        cfg,
    ))
}

/// A bench worker's settings: `--concurrency N` runs N, fixed; without
/// it, what `runner worker` does (one per core, adaptive up to its
/// default).
fn bench_worker_config(
    concurrency: Option<usize>,
    prefetch: crate::worker::Prefetch,
) -> crate::worker::WorkerConfig {
    let mut cfg = crate::worker::WorkerConfig {
        queues: vec!["bench".into()],
        prefetch,
        ..crate::worker::WorkerConfig::default()
    };
    cfg.set_slots(concurrency, None);
    cfg
}

/// How a bench prints a worker's slots.
fn slots_label(concurrency: Option<usize>) -> String {
    let cfg = bench_worker_config(concurrency, crate::worker::Prefetch::Adaptive);
    format!("concurrency {}", cfg.slots_label())
}

/// The value at `pct` (0-100) of `sorted`, nearest rank.
///
/// # Panics
///
/// When `sorted` is empty.
fn percentile<T: Copy>(sorted: &[T], pct: f64) -> T {
    let rank = ((pct / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A progress bar on stderr (hidden when it is not a terminal).
fn progress_bar(len: u64, label: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} ({per_sec})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label);
    bar
}

/// Waits `len` with a bar counting the seconds.
async fn wait_with_bar(len: Duration, label: &'static str) {
    let bar = progress_bar(len.as_secs(), label);
    let end = tokio::time::Instant::now() + len;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - tokio::time::Instant::now())).await;
        bar.inc(1);
    }
    bar.finish_and_clear();
}

/// Enqueues `jobs` jobs of `task` with `input`, `batch` per call; `bar`
/// advances by each batch.
async fn enqueue_jobs(
    producer: &Producer,
    task: &str,
    input: &str,
    jobs: usize,
    batch: usize,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<()> {
    let mut left = jobs;
    while left > 0 {
        let n = left.min(batch.max(1));
        let reqs = (0..n).map(|_| EnqueueRequest::task(task, input)).collect();
        producer.enqueue_batch(reqs).await?;
        left -= n;
        if let Some(bar) = bar {
            bar.inc(n as u64);
        }
    }
    Ok(())
}

/// Waits for `n` final events of the queues `queues` (60 s at most between
/// two); returns how many of them were not a success. `bar` shows how many
/// ended.
async fn wait_finals(
    events: &mut broadcast::Receiver<JobEvent>,
    queues: &[&str],
    n: usize,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<usize> {
    let mut done = 0usize;
    let mut failed = 0usize;
    while done < n {
        match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Ok(ev)) if queues.contains(&ev.queue.as_str()) && ev.state.is_final() => {
                done += 1;
                if ev.state != JobState::Success {
                    failed += 1;
                }
                if let Some(bar) = bar
                    && done.is_multiple_of(500)
                {
                    bar.set_position(done as u64);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                bail!("the event stream lagged by {n}: cannot count results")
            }
            Ok(Err(e)) => bail!("event stream ended: {e}"),
            Err(_) => bail!("no result for 60 s ({done} of {n} done)"),
        }
    }
    Ok(failed)
}

/// A `redis-server` of the bench's own on a free loopback port, in a temp
/// dir, without persistence; killed and removed on drop.
struct RedisChild {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisChild {
    fn start(bin: &str) -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir =
            std::env::temp_dir().join(format!("runner-bench-redis-{}-{port}", std::process::id()));
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

/// Counts the commands a Redis processes between [`CommandCount::reset`]
/// and [`CommandCount::read`] (commands inside scripts included; the
/// counting itself excluded), with a breakdown by command.
struct CommandCount {
    conn: redis::aio::MultiplexedConnection,
}

/// Commands counted over one phase of a bench.
struct Commands {
    total: u64,
    /// `name=calls` by most calls first.
    breakdown: String,
}

impl CommandCount {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(CommandCount { conn })
    }

    /// Resets Redis's counters: the next [`CommandCount::read`] counts from here.
    async fn reset(&mut self) -> anyhow::Result<()> {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Commands processed since the last reset, not counting the reset.
    async fn read(&mut self) -> anyhow::Result<Commands> {
        let info: String = redis::cmd("INFO")
            .arg("all")
            .query_async(&mut self.conn)
            .await?;
        let total: u64 = runner_test_support::info_field(&info, "total_commands_processed")
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
        Ok(Commands {
            total: total.saturating_sub(1),
            breakdown,
        })
    }
}
