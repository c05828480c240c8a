//! `runner inspect queues|workers|active|reserved|scheduled|tasks|modules|
//! dead <queue> [--replay]`, over HTTP.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{ApiArgs, ApiClient, api_path, cell};
use super::out::{self, ListError, outln};

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: InspectWhat,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub enum InspectWhat {
    /// Depths: ready, delayed, in flight, dead.
    Queues,
    /// Workers with a live heartbeat.
    Workers,
    /// Jobs running now, by worker, with the fuel used so far: of the
    /// queues named, or of every queue. Asked of the workers themselves.
    Active { queues: Vec<String> },
    /// Jobs a worker leased that wait for a free slot (prefetched).
    Reserved { queues: Vec<String> },
    /// Delayed jobs of a queue with their due times, soonest first.
    Scheduled {
        queue: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Task names and their modules.
    Tasks,
    /// Uploaded modules.
    Modules,
    /// Dead letters of a queue; `--replay` puts them all back.
    Dead {
        queue: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        replay: bool,
    },
}

/// The items of a JSON array as text (none if it is not an array).
fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().map(cell).collect()
}

pub async fn execute(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.api)?;
    out::exit_code(show(&client, &args.what).await)
}

/// Asks the API for `what` and prints it.
async fn show(client: &ApiClient, what: &InspectWhat) -> Result<(), ListError> {
    match what {
        InspectWhat::Queues => {
            let v = client.get("/v1/queues").await?;
            outln!(
                "{:<24} {:>10} {:>10} {:>10} {:>10}",
                "QUEUE",
                "READY",
                "DELAYED",
                "IN-FLIGHT",
                "DEAD"
            )?;
            for q in v.as_array().into_iter().flatten() {
                outln!(
                    "{:<24} {:>10} {:>10} {:>10} {:>10}",
                    cell(&q["name"]),
                    cell(&q["ready"]),
                    cell(&q["delayed"]),
                    cell(&q["in_flight"]),
                    cell(&q["dead"])
                )?;
            }
        }
        InspectWhat::Workers => {
            let v = client.get("/v1/workers").await?;
            outln!(
                "{:<32} {:<24} {:>4} {:>8} {:>9}  LAST SEEN",
                "WORKER",
                "QUEUES",
                "C",
                "RUNNING",
                "DONE"
            )?;
            for w in v.as_array().into_iter().flatten() {
                let queues = strings(&w["queues"]);
                outln!(
                    "{:<32} {:<24} {:>4} {:>8} {:>9}  {}",
                    cell(&w["id"]),
                    queues.join(","),
                    cell(&w["concurrency"]),
                    w["running"].as_array().map(|a| a.len()).unwrap_or(0),
                    cell(&w["processed"]),
                    cell(&w["last_seen"])
                )?;
            }
        }
        InspectWhat::Active { queues } => held(client, queues, "active").await?,
        InspectWhat::Reserved { queues } => held(client, queues, "reserved").await?,
        InspectWhat::Scheduled { queue, limit } => {
            let v = client
                .get(&format!(
                    "{}?limit={limit}",
                    api_path(&["v1", "queues", queue, "scheduled"])
                ))
                .await?;
            outln!(
                "{:<30} {:<36} {:<20} {:>7}",
                "DUE",
                "JOB",
                "TASK",
                "ATTEMPT"
            )?;
            for s in v.as_array().into_iter().flatten() {
                outln!(
                    "{:<30} {:<36} {:<20} {:>7}",
                    cell(&s["due"]),
                    cell(&s["job"]["id"]),
                    cell(&s["job"]["task"]),
                    cell(&s["job"]["attempt"])
                )?;
            }
        }
        InspectWhat::Tasks => {
            let v = client.get("/v1/tasks").await?;
            outln!("{:<20} {:<16} {:<20} BOUND AT", "TASK", "QUEUE", "MODULE")?;
            for t in v.as_array().into_iter().flatten() {
                let module = cell(&t["module"]);
                outln!(
                    "{:<20} {:<16} {:<20} {}",
                    cell(&t["name"]),
                    cell(&t["queue"]),
                    module.get(..19).unwrap_or(&module),
                    cell(&t["bound_at"])
                )?;
            }
        }
        InspectWhat::Modules => {
            let v = client.get("/v1/modules").await?;
            outln!("{:<73} {:>10}  NEEDS", "MODULE", "BYTES")?;
            for m in v.as_array().into_iter().flatten() {
                let caps = strings(&m["capabilities"]);
                outln!(
                    "{:<73} {:>10}  {}",
                    cell(&m["hash"]),
                    cell(&m["size"]),
                    caps.join(",")
                )?;
            }
        }
        InspectWhat::Dead {
            queue,
            limit,
            replay,
        } => {
            if *replay {
                let v = client
                    .post_json(&api_path(&["v1", "queues", queue, "replay"]), &json!({}))
                    .await?;
                outln!(
                    "replayed {} jobs",
                    v["replayed"].as_array().map(|a| a.len()).unwrap_or(0)
                )?;
            } else {
                let v = client
                    .get(&format!(
                        "{}?limit={limit}",
                        api_path(&["v1", "queues", queue, "dead"])
                    ))
                    .await?;
                for j in v.as_array().into_iter().flatten() {
                    outln!(
                        "{}  {}  {}: {}",
                        cell(&j["id"]),
                        cell(&j["task"]),
                        cell(&j["error"]["kind"]),
                        cell(&j["error"]["message"])
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// Whether a job held in queue `held` (a queue or a partition, `hot~3`)
/// is of `queues` (all when empty): a queue takes in its partitions.
fn asked_for(held: &str, queues: &[String]) -> bool {
    queues.is_empty()
        || queues
            .iter()
            .any(|q| q == held || q == crate::queue::partition::queue_of(held))
}

/// The jobs the workers hold (`which`: "active" or "reserved") of
/// `queues` (every queue when empty), by worker.
async fn held(client: &ApiClient, queues: &[String], which: &str) -> Result<(), ListError> {
    let v = client.get("/v1/inspect").await?;
    outln!(
        "{:<32} {:<16} {:<36} {:<20} {:>7} {:>14}  SINCE",
        "WORKER",
        "QUEUE",
        "JOB",
        "TASK",
        "ATTEMPT",
        "FUEL USED"
    )?;
    for w in v.as_array().into_iter().flatten() {
        for j in w[which].as_array().into_iter().flatten() {
            if !asked_for(j["queue"].as_str().unwrap_or(""), queues) {
                continue;
            }
            let since = if which == "active" {
                &j["started_at"]
            } else {
                &j["leased_at"]
            };
            outln!(
                "{:<32} {:<16} {:<36} {:<20} {:>7} {:>14}  {}",
                cell(&w["id"]),
                cell(&j["queue"]),
                cell(&j["id"]),
                cell(&j["task"]),
                cell(&j["attempt"]),
                cell(&j["fuel_used"]),
                cell(since)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job held in a partition is shown for its queue. Before, `runner
    /// inspect active hot` showed nothing of `hot`'s partitions.
    #[test]
    fn a_queue_takes_in_its_partitions() {
        let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(asked_for("hot~3", &q(&["hot"])));
        assert!(asked_for("hot~3", &q(&["hot~3"])));
        assert!(asked_for("hot", &q(&["hot"])));
        assert!(asked_for("hot~3", &q(&[])));
        assert!(!asked_for("hot~3", &q(&["hot~2"])));
        assert!(!asked_for("hotter", &q(&["hot"])));
        assert!(!asked_for("cold~1", &q(&["hot", "warm"])));
    }
}
