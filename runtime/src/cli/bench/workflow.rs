//! `runner bench workflow`: the bulk-generation workflow (a chain of
//! groups, then a finaliser that collects every batch) on a Redis of its
//! own with one worker, and what it costs Redis per member job.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde_json::json;
use tokio::sync::broadcast;

use super::{CommandCount, RedisChild, bench_module};
use crate::producer::{Caller, Producer};
use crate::queue::{Broker, JobEvent, JobId, RedisBroker, RetryPolicy};
use crate::registry::{RedisRegistry, Registry, TaskBinding};
use crate::workflow::{WorkflowRequest, Workflows};

#[derive(Args, Debug)]
pub struct WorkflowBench {
    /// Member jobs (the scenario's 62).
    #[arg(long, default_value_t = 62)]
    pub members: usize,
    /// Jobs per batch (a group; the scenario's 5).
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Workflows run one after another; each prints its figures.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Worker concurrency, fixed (default: adaptive from one per core, as `runner worker`).
    #[arg(long)]
    pub concurrency: Option<usize>,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
}

pub async fn execute(args: WorkflowBench) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (1..=crate::workflow::MAX_MEMBERS - 1).contains(&args.members),
        "--members: 1 to {}",
        crate::workflow::MAX_MEMBERS - 1
    );
    anyhow::ensure!(args.batch >= 1, "--batch: at least 1");
    anyhow::ensure!((1..=100).contains(&args.runs), "--runs: 1 to 100");
    let redis = RedisChild::start(&args.redis_server)?;
    let url = redis.url();
    let mut count = CommandCount::connect(&url).await?;
    let broker = RedisBroker::connect(&url).await?;
    // Cached as `runner serve` and `runner worker` keep it (`app.rs`): a
    // launch reads its steps' bindings, from the cache.
    let registry: Arc<dyn Registry> = Arc::new(RedisRegistry::cached(
        broker.connection(),
        broker.endpoint(),
    ));
    let (bytes, module_name) = bench_module(None)?;
    let hash = registry.put_module(&bytes).await?;
    for task in ["generate", "finalise"] {
        let mut binding = TaskBinding::new(task, hash);
        binding.queue = "bench".into();
        binding.retry = RetryPolicy::none();
        registry.bind(binding).await?;
    }
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let producer = Producer::new(broker.clone(), registry.clone());
    let workflows = Workflows::new(producer);
    let mut events = broker.subscribe().await?;

    let worker = super::bench_worker(
        &url,
        registry.clone(),
        bytes,
        args.concurrency,
        crate::worker::Prefetch::Adaptive,
    )
    .await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    let batches = args.members.div_ceil(args.batch);
    println!(
        "runner bench workflow: {} jobs of {module_name} in {batches} batches of {} (a chain of groups), then a finaliser that collects them; one worker, {}",
        args.members,
        args.batch,
        super::slots_label(args.concurrency)
    );
    // Let the worker settle into idle first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for run in 1..=args.runs {
        let req = bulk_request(args.members, args.batch);
        count.reset().await?;
        let started = Instant::now();
        let s = workflows.submit(Caller::Runner, &req).await?;
        wait_end(&mut events, s.id).await?;
        let took = started.elapsed();
        let used = count.read().await?;
        let status = workflows
            .status(s.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the workflow's record is gone"))?;
        if status.state != crate::queue::WfState::Succeeded {
            bail!("the workflow ended {:?}: {status:?}", status.state);
        }
        // The finaliser counts as a member job too.
        let jobs = s.total;
        println!(
            "run {run}: {} ms, {} Redis commands for {jobs} jobs: {:.2} per member job",
            took.as_millis(),
            used.total,
            used.total as f64 / jobs as f64
        );
        println!("  by command: {}", used.breakdown);
    }
    count.reset().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = count.read().await?;
    println!(
        "idle after the runs: {} Redis commands in 5 s ({})",
        idle.total, idle.breakdown
    );
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker_task).await;
    Ok(ExitCode::SUCCESS)
}

/// The scenario's workflow: `members` jobs in groups of `batch`, chained,
/// then a finaliser that gets every batch's results.
fn bulk_request(members: usize, batch: usize) -> WorkflowRequest {
    let mut chain: Vec<serde_json::Value> = (0..members)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| {
            let group: Vec<_> = c
                .iter()
                .map(|n| json!({"task": "generate", "input": {"name": format!("piece {n}")}}))
                .collect();
            json!({ "group": group })
        })
        .collect();
    chain.push(json!({
        "task": "finalise",
        "input": {"name": "final"},
        "previous": "batches",
        "collect": true
    }));
    WorkflowRequest {
        workflow: json!({ "chain": chain }),
        ttl_secs: Some(3600),
        idempotency_key: None,
    }
}

/// Waits for workflow `id`'s final event (60 s at most between events).
async fn wait_end(events: &mut broadcast::Receiver<JobEvent>, id: JobId) -> anyhow::Result<()> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), events.recv()).await {
            Ok(Ok(ev)) if ev.id == id && ev.state.is_final() => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => bail!("event stream ended: {e}"),
            Err(_) => bail!("the workflow made no progress for 60 s"),
        }
    }
}
