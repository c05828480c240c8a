//! `runner bench queue`: the queue engine's figures against a Redis it
//! starts itself (a fresh `redis-server` on a free loopback port):
//!
//! - jobs/s for N no-op WASM jobs (the built-in `hello`) with one worker, the
//!   producer enqueueing in batches: all of them before the worker starts,
//!   then N more while the running worker drains them;
//! - Redis commands per job from enqueue to stored result
//!   (`total_commands_processed` delta over the run; commands run inside
//!   Lua scripts are counted by Redis itself, and the worker's start-up and
//!   heartbeats are included);
//! - enqueue-to-result round trip p50/p99 for single jobs on an idle worker;
//! - Redis commands per minute from one idle worker;
//! - with `--workers 1,2,4`, the jobs drained by that many `runner worker`
//!   processes, enqueued while they drain, and Redis's CPU (`scaling.rs`);
//! - when Celery is installed, the same jobs drained by one Celery worker
//!   on a Redis of its own, beside one `runner worker` process run the
//!   same way, as a ratio (`celery_bench.py`).
//!
//! Completion is observed through the broker's pub/sub events, which Redis
//! does not count as commands, so watching does not inflate the figures.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use tokio::sync::broadcast;

use super::{
    CommandCount, Commands, RedisChild, bench_module, enqueue_jobs, percentile, progress_bar,
    wait_finals, wait_with_bar,
};

use crate::producer::{EnqueueRequest, Producer};
use crate::queue::{Broker, JobEvent, RedisBroker, RetryPolicy};
use crate::registry::{RedisRegistry, Registry, TaskBinding};

#[derive(Args, Debug)]
pub struct QueueBench {
    /// Jobs for the throughput figure.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Jobs per enqueue call.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Worker concurrency, fixed (default: adaptive from one per core, as `runner worker`).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Jobs the worker leases ahead of a free slot (default: adaptive, as
    /// a worker's default).
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Sequential single jobs for the round-trip figure.
    #[arg(long, default_value_t = 300)]
    pub single: usize,
    /// How long to watch the idle worker.
    #[arg(long, default_value = "60s", value_parser = crate::config::parse_bounded_duration)]
    pub idle: Duration,
    /// The component to run (default: the built-in `hello`).
    #[arg(long)]
    pub module: Option<PathBuf>,
    #[arg(long, default_value = r#"{"name":"bench"}"#)]
    pub input: String,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Then drain `--jobs` jobs with N `runner worker` processes for each
    /// N given (`--workers 1,2,4`), printing jobs/s and Redis CPU per step.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Instead of the figures above: the same jobs on local Redis Clusters
    /// of these sizes (masters; `--cluster` alone: 3, then 6), on one
    /// queue, on one queue in 8 partitions and on eight queues
    /// (`cluster.rs`). Runs `redis-server` from PATH (not
    /// `--redis-server`).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_missing_value = "3,6")]
    pub cluster: Option<Vec<usize>>,
    /// Worker processes for `--cluster`.
    #[arg(long, default_value_t = 1)]
    pub cluster_workers: usize,
    /// The pub/sub of queue events for `--cluster`: `sharded` (the
    /// default of a cluster URL) or `classic` (`?pubsub=classic`).
    #[arg(long, default_value = "sharded", value_parser = ["sharded", "classic"])]
    pub cluster_pubsub: String,
    /// Skip Celery's side (run when `python3` can import `celery` and
    /// `redis`: `pip install 'celery[redis]'`).
    #[arg(long)]
    pub no_celery: bool,
}

pub async fn execute(args: QueueBench) -> anyhow::Result<ExitCode> {
    if let Some(sizes) = &args.cluster {
        anyhow::ensure!(
            (1..=16).contains(&args.cluster_workers),
            "--cluster-workers: {} is not between 1 and 16",
            args.cluster_workers
        );
        let (bytes, module_name) = bench_module(args.module.as_deref())?;
        println!(
            "runner bench queue --cluster: {} jobs of {module_name}",
            args.jobs
        );
        let layouts = super::cluster::run(
            sizes,
            &bytes,
            &args.input,
            args.jobs,
            args.batch,
            args.cluster_workers,
            args.cluster_pubsub == "classic",
        )
        .await?;
        super::cluster::print(
            &layouts,
            args.jobs,
            args.cluster_workers,
            &args.cluster_pubsub,
        );
        return Ok(ExitCode::SUCCESS);
    }
    let redis = RedisChild::start(&args.redis_server)?;
    let url = redis.url();
    let mut count = CommandCount::connect(&url).await?;

    let producer_broker = RedisBroker::connect(&url).await?;
    let registry: Arc<dyn Registry> = Arc::new(RedisRegistry::cached(
        producer_broker.connection(),
        producer_broker.endpoint(),
    ));
    let (bytes, module_name) = bench_module(args.module.as_deref())?;
    let hash = registry.put_module(&bytes).await?;
    let mut binding = TaskBinding::new("bench", hash);
    binding.queue = "bench".into();
    binding.retry = RetryPolicy::none();
    registry.bind(binding).await?;
    let broker: Arc<dyn Broker> = Arc::new(producer_broker);
    let producer = Producer::new(broker.clone(), registry.clone());
    // Watch results through pub/sub (not counted as commands).
    let mut events = broker.subscribe().await?;

    println!(
        "runner bench queue: {} jobs of {} (batches of {}), one worker, {}, prefetch {}",
        args.jobs,
        module_name,
        args.batch,
        super::slots_label(args.concurrency),
        args.prefetch
            .map_or_else(|| "adaptive".to_string(), |n| n.to_string())
    );

    // The worker starts after the enqueue phase (see `throughput`).
    let worker = super::bench_worker(
        &url,
        registry.clone(),
        bytes,
        args.concurrency,
        args.prefetch.map_or(
            crate::worker::Prefetch::Adaptive,
            crate::worker::Prefetch::Fixed,
        ),
    )
    .await?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let start_worker = move || {
        tokio::spawn(worker.run(async move {
            let _ = stop_rx.await;
        }))
    };
    let (throughput, worker_task) =
        measure_throughput(&args, &producer, &mut events, &mut count, start_worker).await?;
    throughput.print(args.jobs);
    // Let the worker settle into idle first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let round_trip = measure_round_trip(&args, &producer, &mut events, &mut count).await?;
    round_trip.print(args.single);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = measure_idle(args.idle, &mut count).await?;
    idle.print(args.idle);

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker_task).await;

    let celery = if args.no_celery {
        None
    } else {
        super::scaling::celery_version()
    };
    let celery_missing = !args.no_celery && celery.is_none();
    let mut counts = args.workers.clone();
    if celery.is_some() && !counts.contains(&1) {
        // Celery's figure is compared with one worker process, run the same way.
        counts.insert(0, 1);
    }
    if !counts.is_empty() {
        let cache = std::env::temp_dir().join(format!("runner-bench-cache-{}", std::process::id()));
        let mut steps = Vec::new();
        for &n in &counts {
            anyhow::ensure!(
                (1..=64).contains(&n),
                "--workers: {n} is not between 1 and 64"
            );
            let step = super::scaling::step(
                n,
                &url,
                "bench",
                "bench",
                &args.input,
                args.jobs,
                args.batch,
                &producer,
                &broker,
                &cache,
            )
            .await;
            match step {
                Ok(s) => steps.push(s),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&cache);
                    return Err(e.context(format!("{n} worker processes")));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&cache);
        let shown: Vec<_> = steps
            .iter()
            .filter(|s| args.workers.contains(&s.workers))
            .collect();
        if !shown.is_empty() {
            super::scaling::print(&shown, args.jobs);
        }
        if let Some(version) = celery {
            let run = super::scaling::celery(&args.redis_server, args.jobs, 2, version).await?;
            if let Some(one) = steps.iter().find(|s| s.workers == 1) {
                super::scaling::print_celery(&run, one, args.jobs);
            }
        }
    }
    if !args.no_celery && celery_missing {
        println!(
            "celery: not installed (`pip install 'celery[redis]'` to see its figures beside these)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--jobs` jobs enqueued in batches, then drained by the worker; then as
/// many again enqueued while the (now running) worker drains them.
struct Throughput {
    enqueue: Duration,
    process: Duration,
    total: Duration,
    commands: Commands,
    live: Live,
}

/// Jobs enqueued while a running worker drains them, the way a deployment
/// (and Celery's side of this bench) runs: its workers are up before the
/// jobs come.
struct Live {
    /// First enqueue to last result.
    total: Duration,
    /// First enqueue to the last batch enqueued.
    enqueue: Duration,
    commands: Commands,
}

impl Throughput {
    fn print(&self, jobs: usize) {
        let rate = |d: Duration| jobs as f64 / d.as_secs_f64();
        println!("throughput, a full queue (all {jobs} enqueued, then the worker starts)");
        println!(
            "  enqueue:            {:>10.0} jobs/s ({:.2?} for {jobs})",
            rate(self.enqueue),
            self.enqueue
        );
        println!(
            "  process:            {:>10.0} jobs/s ({:.2?}, worker start to last result)",
            rate(self.process),
            self.process
        );
        println!(
            "  end to end:         {:>10.0} jobs/s ({:.2?})",
            rate(self.total),
            self.total
        );
        print_per_job(&self.commands, jobs);
        let live = &self.live;
        println!(
            "throughput, enqueued while the worker drains ({jobs} more, the worker already running)"
        );
        println!(
            "  end to end:         {:>10.0} jobs/s ({:.2?}, first enqueue to last result; the enqueue took {:.2?})",
            rate(live.total),
            live.total,
            live.enqueue
        );
        print_per_job(&live.commands, jobs);
    }
}

/// Redis commands per job of a throughput figure, and which.
fn print_per_job(commands: &Commands, jobs: usize) {
    println!(
        "  redis per job:      {:>10.2} ({} commands, enqueue to stored result; budget <= 4)",
        commands.total as f64 / jobs as f64,
        commands.total,
    );
    println!("  by command:         {}", commands.breakdown);
}

/// Enqueues `args.jobs` jobs, starts the worker (`start_worker`), and waits
/// for every result event. Returns the figures and the running worker.
async fn measure_throughput<W>(
    args: &QueueBench,
    producer: &Producer,
    events: &mut broadcast::Receiver<JobEvent>,
    count: &mut CommandCount,
    start_worker: impl FnOnce() -> W,
) -> anyhow::Result<(Throughput, W)> {
    count.reset().await?;
    let t0 = Instant::now();
    let bar = progress_bar(args.jobs as u64, "enqueue");
    enqueue_jobs(
        producer,
        "bench",
        &args.input,
        args.jobs,
        args.batch,
        Some(&bar),
    )
    .await?;
    let enqueue = t0.elapsed();

    bar.set_position(0);
    bar.set_message("process");
    let t1 = Instant::now();
    let worker = start_worker();
    let failed = wait_finals(events, &["bench"], args.jobs, Some(&bar)).await?;
    let process = t1.elapsed();
    let total = t0.elapsed();
    bar.finish_and_clear();
    let commands = count.read().await?;
    if failed > 0 {
        bail!("{failed} jobs did not succeed");
    }
    let live = measure_live(args, producer, events, count).await?;
    Ok((
        Throughput {
            enqueue,
            process,
            total,
            commands,
            live,
        },
        worker,
    ))
}

/// `args.jobs` jobs enqueued in batches while the running worker drains
/// them.
async fn measure_live(
    args: &QueueBench,
    producer: &Producer,
    events: &mut broadcast::Receiver<JobEvent>,
    count: &mut CommandCount,
) -> anyhow::Result<Live> {
    // The worker goes idle first, as between two bursts of a deployment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    count.reset().await?;
    let bar = progress_bar(args.jobs as u64, "enqueue while it drains");
    let t0 = Instant::now();
    let mut enqueue = {
        let producer = producer.clone();
        let (input, jobs, batch) = (args.input.clone(), args.jobs, args.batch);
        tokio::spawn(async move {
            enqueue_jobs(&producer, "bench", &input, jobs, batch, None).await?;
            anyhow::Ok(t0.elapsed())
        })
    };
    let finals = wait_finals(events, &["bench"], args.jobs, Some(&bar));
    tokio::pin!(finals);
    // A failed enqueue is reported at once, not after the wait for
    // results that will never come runs out.
    let (failed, enqueue) = tokio::select! {
        failed = &mut finals => (failed, enqueue.await),
        took = &mut enqueue => {
            let took = took??;
            (finals.await, Ok(Ok(took)))
        }
    };
    let total = t0.elapsed();
    bar.finish_and_clear();
    let enqueue = enqueue??;
    let failed = failed?;
    let commands = count.read().await?;
    if failed > 0 {
        bail!("{failed} jobs did not succeed");
    }
    Ok(Live {
        total,
        enqueue,
        commands,
    })
}

/// Single jobs, one after the other, on an idle worker.
struct RoundTrip {
    /// Enqueue to the final record in hand (from the end event, or read
    /// when the event came without it), sorted.
    times: Vec<Duration>,
    /// How many results came with their end event (no read).
    in_event: usize,
    commands: Commands,
}

impl RoundTrip {
    fn print(&self, single: usize) {
        println!("single jobs (enqueue -> result in hand, idle worker, {single} sequential)");
        if self.times.is_empty() {
            return;
        }
        println!(
            "  results in events:  {:>10} of {} (the others read with GET)",
            self.in_event,
            self.times.len()
        );
        println!(
            "  p50:                {:>10.2?}",
            percentile(&self.times, 50.0)
        );
        println!(
            "  p99:                {:>10.2?}",
            percentile(&self.times, 99.0)
        );
        println!(
            "  commands per job:   {:>10.2} (no batching at all)",
            self.commands.total as f64 / single as f64
        );
        println!("  by command:         {}", self.commands.breakdown);
    }
}

async fn measure_round_trip(
    args: &QueueBench,
    producer: &Producer,
    events: &mut broadcast::Receiver<JobEvent>,
    count: &mut CommandCount,
) -> anyhow::Result<RoundTrip> {
    // This loop reads every event at once: it may have every record.
    let _records = producer.broker().want_record(None);
    count.reset().await?;
    let mut times = Vec::with_capacity(args.single);
    let mut in_event = 0;
    for _ in 0..args.single {
        let t = Instant::now();
        let id = producer
            .enqueue(EnqueueRequest::task("bench", args.input.clone()))
            .await?
            .job
            .id;
        let record = loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
                Ok(Ok(ev)) if ev.id == id && ev.state.is_final() => break ev.record,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("event stream: {e}"),
                Err(_) => bail!("single job {id} did not finish in 30 s"),
            }
        };
        let job = match record {
            Some(rec) => {
                in_event += 1;
                crate::queue::Job::from_json(&rec)?
            }
            None => match producer.broker().get(id).await? {
                Some(job) => job,
                None => bail!("single job {id} ended but its record is gone"),
            },
        };
        if job.result.is_none() {
            bail!("single job {id} ended without a result: {:?}", job.state);
        }
        times.push(t.elapsed());
    }
    let commands = count.read().await?;
    times.sort();
    Ok(RoundTrip {
        times,
        in_event,
        commands,
    })
}

/// What an idle worker costs Redis.
struct Idle {
    commands: Commands,
    per_minute: f64,
}

impl Idle {
    fn print(&self, idle: Duration) {
        println!("idle worker ({idle:?})");
        println!(
            "  commands per minute:{:>10.2} ({} commands; budget <= 2)",
            self.per_minute, self.commands.total
        );
        if !self.commands.breakdown.is_empty() {
            println!("  by command:         {}", self.commands.breakdown);
        }
    }
}

async fn measure_idle(idle: Duration, count: &mut CommandCount) -> anyhow::Result<Idle> {
    count.reset().await?;
    wait_with_bar(idle, "idle").await;
    let commands = count.read().await?;
    let per_minute = commands.total as f64 * 60.0 / idle.as_secs_f64();
    Ok(Idle {
        commands,
        per_minute,
    })
}
