//! `runner bench queue --cluster`: the queue on local Redis Clusters it
//! starts itself (3 masters, then 6; no replicas: a replica only copies its
//! master's writes), each node a `redis-server` in cluster mode on
//! loopback. For each size, the same jobs are drained by `runner worker`
//! processes (this binary, default settings) on the cluster URL, enqueued
//! while they drain:
//!
//! - one queue: every job's keys hash to one slot, so one master does all
//!   the queue's work whatever the cluster's size;
//! - one queue split into eight partitions (`[queues.x] partitions = 8`,
//!   `queue/partition.rs`): the producer spreads the jobs over them, each
//!   partition on its own slot, and every worker consumes all eight;
//! - eight queues (the jobs spread evenly), each on its own slot: the work
//!   spreads over the masters.
//!
//! It prints jobs/s, Redis commands per job (summed over the masters), the
//! busiest master's share of them (1/N when the load is even), and the
//! pub/sub messages the nodes relayed to each other over the cluster bus
//! per job (classic pub/sub: every message to every other node; sharded:
//! only to the shard's replicas, of which these clusters have none).
//! `docs/scaling.md` reads these figures.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use runner_test_support::{RedisCluster, info_field};

use super::scaling::Workers;
use crate::producer::Producer;
use crate::queue::partition::Partitions;
use crate::queue::{Broker, RedisBroker, RetryPolicy};
use crate::registry::{RedisRegistry, Registry, TaskBinding};

/// One measured layout on one cluster.
pub struct Layout {
    pub masters: usize,
    pub queues: usize,
    /// Partitions of each queue (1: not split).
    pub partitions: u32,
    pub jobs_per_sec: f64,
    pub commands_per_job: f64,
    /// The busiest master's share of the commands (0-1).
    pub busiest_share: f64,
    /// Pub/sub messages sent over the cluster bus, per job.
    pub bus_per_job: f64,
}

/// Pub/sub messages the nodes have sent each other over the cluster bus
/// so far (`CLUSTER INFO`: classic and sharded).
fn bus_messages(cluster: &RedisCluster) -> anyhow::Result<u64> {
    let mut total = 0;
    for node in cluster.nodes.iter().filter(|n| n.alive()) {
        let info: String = node
            .query(redis::cmd("CLUSTER").arg("INFO"))
            .map_err(anyhow::Error::msg)?;
        for field in [
            "cluster_stats_messages_publish_sent",
            "cluster_stats_messages_publishshard_sent",
        ] {
            total += info_field::<u64>(&info, field).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Commands processed so far by each master.
fn master_commands(cluster: &RedisCluster) -> anyhow::Result<Vec<u64>> {
    let infos = cluster.masters_info("stats").map_err(anyhow::Error::msg)?;
    infos
        .iter()
        .map(|info| {
            info_field(info, "total_commands_processed")
                .context("no total_commands_processed in INFO")
        })
        .collect()
}

/// Runs every layout on a cluster of each size in `sizes`.
pub async fn run(
    sizes: &[usize],
    module: &[u8],
    input: &str,
    jobs: usize,
    batch: usize,
    workers: usize,
    classic: bool,
) -> anyhow::Result<Vec<Layout>> {
    anyhow::ensure!(!sizes.is_empty(), "--cluster: no cluster size given");
    anyhow::ensure!(
        jobs >= 8,
        "--jobs: {jobs} is fewer than the eight queues to spread over"
    );
    // The worker processes' compiled modules, shared by every layout.
    let cache = std::env::temp_dir().join(format!("runner-bench-cache-{}", std::process::id()));
    let mut out = Vec::new();
    for &masters in sizes {
        anyhow::ensure!(
            (1..=16).contains(&masters),
            "a cluster of {masters} masters: between 1 and 16"
        );
        let cluster =
            tokio::task::spawn_blocking(move || RedisCluster::try_start(masters, 0, None))
                .await?
                .map_err(anyhow::Error::msg)
                .context("starting a local Redis Cluster (redis-server, see scripts/setup)")?;
        for (queues, partitions) in [(1, 1), (1, 8), (8, 1)] {
            let shape = Shape { queues, partitions };
            let measured = layout(
                &cluster, masters, shape, module, input, jobs, batch, workers, &cache, classic,
            )
            .await
            .with_context(|| format!("{masters} masters, {}", shape.label()));
            match measured {
                Ok(l) => out.push(l),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&cache);
                    return Err(e);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    Ok(out)
}

/// How many queues a layout spreads its jobs over, and the partitions of
/// each.
#[derive(Clone, Copy)]
struct Shape {
    queues: usize,
    partitions: u32,
}

impl Shape {
    fn label(&self) -> String {
        let queues = match self.queues {
            1 => "1 queue".to_string(),
            n => format!("{n} queues"),
        };
        match self.partitions {
            1 => queues,
            p => format!("{queues} in {p} partitions"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn layout(
    cluster: &RedisCluster,
    masters: usize,
    shape: Shape,
    module: &[u8],
    input: &str,
    jobs: usize,
    batch: usize,
    workers: usize,
    cache: &std::path::Path,
    classic: bool,
) -> anyhow::Result<Layout> {
    let url = if classic {
        format!("{}?pubsub=classic", cluster.url())
    } else {
        cluster.url()
    };
    let b = RedisBroker::connect(&url).await?;
    let closer = b.clone();
    let registry: Arc<dyn Registry> = Arc::new(RedisRegistry::cached(b.connection(), b.endpoint()));
    let broker: Arc<dyn Broker> = Arc::new(b);
    let Shape { queues, partitions } = shape;
    let hash = registry.put_module(module).await?;
    let names: Vec<String> = (0..queues)
        .map(|i| format!("bench{queues}p{partitions}-{i}"))
        .collect();
    let split = Partitions::new(names.iter().map(|n| (n, partitions)))?;
    let producer = Producer::new(broker.clone(), registry.clone()).with_partitions(split.clone());
    // What the workers consume, and where the jobs' events come from.
    let consumed = split.expand(&names);
    for name in &names {
        let mut binding = TaskBinding::new(name, hash);
        binding.queue = name.clone();
        binding.retry = RetryPolicy::none();
        registry.bind(binding).await?;
    }
    let ids: Vec<String> = (0..workers)
        .map(|i| format!("bench-cluster-{masters}m-{queues}q{partitions}p-{i}"))
        .collect();
    let _workers = Workers::start(&url, &consumed.join(","), &ids, cache, &broker).await?;
    let queue_refs: Vec<&str> = consumed.iter().map(String::as_str).collect();
    let mut events = broker.subscribe().await?;
    // Warm up: each worker has loaded the module and leased once.
    for name in &names {
        super::enqueue_jobs(&producer, name, input, 50, 50, None).await?;
    }
    super::wait_finals(&mut events, &queue_refs, 50 * queues, None).await?;

    let before = master_commands(cluster)?;
    let bus_before = bus_messages(cluster)?;
    let t0 = Instant::now();
    let enqueue = {
        let producer = producer.clone();
        let (names, input) = (names.clone(), input.to_string());
        tokio::spawn(async move {
            // The queues' shares side by side, a batch of each in turn.
            let per = jobs / names.len();
            let mut left = vec![per; names.len()];
            left[0] += jobs - per * names.len();
            while left.iter().any(|&l| l > 0) {
                for (name, l) in names.iter().zip(left.iter_mut()) {
                    let n = (*l).min(batch.max(1));
                    if n > 0 {
                        super::enqueue_jobs(&producer, name, &input, n, n, None).await?;
                        *l -= n;
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let failed = super::wait_finals(&mut events, &queue_refs, jobs, None).await?;
    let took = t0.elapsed();
    enqueue.await??;
    if failed > 0 {
        bail!("{failed} jobs did not succeed");
    }
    let after = master_commands(cluster)?;
    let bus = bus_messages(cluster)?.saturating_sub(bus_before);
    // The event feed's subscriptions end here, before the cluster does.
    drop(events);
    closer.close().await;
    let spent: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total: u64 = spent.iter().sum();
    let busiest = spent.iter().copied().max().unwrap_or(0);
    Ok(Layout {
        masters,
        queues,
        partitions,
        jobs_per_sec: jobs as f64 / took.as_secs_f64(),
        commands_per_job: total as f64 / jobs as f64,
        busiest_share: if total == 0 {
            0.0
        } else {
            busiest as f64 / total as f64
        },
        bus_per_job: bus as f64 / jobs as f64,
    })
}

pub fn print(layouts: &[Layout], jobs: usize, workers: usize, pubsub: &str) {
    println!(
        "redis cluster ({jobs} jobs per layout, enqueued while {workers} `runner worker` process{} drain{} them; no replicas; {pubsub} pub/sub)",
        if workers == 1 { "" } else { "es" },
        if workers == 1 { "s" } else { "" }
    );
    for l in layouts {
        let shape = Shape {
            queues: l.queues,
            partitions: l.partitions,
        };
        let what = format!("{} masters, {}:", l.masters, shape.label());
        println!(
            "  {what:<36}{:>10.0} jobs/s  {:.2} commands per job  busiest master {:.0}% of them  {:.2} bus messages per job",
            l.jobs_per_sec,
            l.commands_per_job,
            l.busiest_share * 100.0,
            l.bus_per_job
        );
    }
}
