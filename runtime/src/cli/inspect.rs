//! `runner inspect queues|workers|dead <queue> [--replay]`

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::worker::RedisArgs;
use crate::queue::Broker;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: InspectWhat,
    #[command(flatten)]
    pub redis: RedisArgs,
}

#[derive(Subcommand, Debug)]
pub enum InspectWhat {
    /// Depths: ready, delayed, in flight, dead.
    Queues,
    /// Workers with a live heartbeat.
    Workers,
    /// Dead letters of a queue; `--replay` puts them all back.
    Dead {
        queue: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        replay: bool,
    },
}

pub async fn execute(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let (broker, _) = args.redis.connect().await?;
    match args.what {
        InspectWhat::Queues => {
            println!(
                "{:<24} {:>10} {:>10} {:>10} {:>10}",
                "QUEUE", "READY", "DELAYED", "IN-FLIGHT", "DEAD"
            );
            for q in broker.queues().await? {
                println!(
                    "{:<24} {:>10} {:>10} {:>10} {:>10}",
                    q.name, q.ready, q.delayed, q.in_flight, q.dead
                );
            }
        }
        InspectWhat::Workers => {
            println!(
                "{:<32} {:<16} {:>4} {:>9} {:>9}  LAST SEEN",
                "WORKER", "QUEUES", "C", "RUNNING", "DONE"
            );
            for w in broker.workers().await? {
                println!(
                    "{:<32} {:<16} {:>4} {:>9} {:>9}  {}",
                    w.id,
                    w.queues.join(","),
                    w.concurrency,
                    w.running.len(),
                    w.processed,
                    w.last_seen.format("%Y-%m-%d %H:%M:%S")
                );
            }
        }
        InspectWhat::Dead {
            queue,
            limit,
            replay,
        } => {
            crate::queue::job::validate_queue_name(&queue)?;
            if replay {
                let ids = broker.replay(&queue, &[]).await?;
                println!("replayed {} jobs", ids.len());
            } else {
                for j in broker.dead_letters(&queue, limit).await? {
                    let err = j
                        .error
                        .as_ref()
                        .map(|e| format!("{}: {}", e.kind, e.message))
                        .unwrap_or_default();
                    println!("{}  {}  {}", j.id, j.task.as_deref().unwrap_or("-"), err);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
