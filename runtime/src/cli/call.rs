//! `runner call <task> --input '{..}' [--queue q] [--countdown 10] [--wait 30s] [--repeat N]`
//! enqueues over HTTP; `--wait` prints the result when the job ends, with
//! the exit code of `runner status`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::client::{ApiArgs, ApiClient, json_arg, report, text_or_file};
use super::out::outln;

#[derive(Args, Debug)]
pub struct CallArgs {
    /// The task name.
    pub task: String,
    /// JSON input (`@file.json` reads a file).
    #[arg(long, default_value = "{}")]
    pub input: String,
    #[arg(long, short = 'Q')]
    pub queue: Option<String>,
    /// Seconds to wait before the job may run.
    #[arg(long, allow_hyphen_values = true, value_parser = seconds)]
    pub countdown: Option<f64>,
    /// Seconds after which the job is dropped unrun.
    #[arg(long, allow_hyphen_values = true, value_parser = seconds)]
    pub expires: Option<f64>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// 0 to 9: higher runs first within the queue (the task's default
    /// when absent).
    #[arg(long)]
    pub priority: Option<u64>,
    /// Wait this long for the result (e.g. 30s) and print it.
    #[arg(long, value_parser = crate::config::parse_bounded_duration, num_args = 0..=1, default_missing_value = "60s")]
    pub wait: Option<Duration>,
    /// Enqueue this many jobs with the same input (in batches, with a
    /// progress bar). Not with an idempotency key: the jobs would all be
    /// the first one.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["wait", "idempotency_key"],
          value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    #[command(flatten)]
    pub api: ApiArgs,
}

const BATCH: u64 = 500;

/// A number of seconds; NaN and infinity are refused here: JSON has
/// neither, so the flag would reach the server as null ("not set") and be
/// silently dropped. The server checks the range.
fn seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

pub async fn execute(args: CallArgs) -> anyhow::Result<ExitCode> {
    let input = json_arg("--input", &text_or_file(&args.input)?)?;
    let client = ApiClient::new(&args.api)?;
    let mut job = json!({ "task": args.task, "input": input });
    let obj = job.as_object_mut().expect("object");
    if let Some(q) = &args.queue {
        obj.insert("queue".into(), json!(q));
    }
    if let Some(c) = args.countdown {
        obj.insert("countdown".into(), json!(c));
    }
    if let Some(e) = args.expires {
        obj.insert("expires_in".into(), json!(e));
    }
    if let Some(k) = &args.idempotency_key {
        obj.insert("idempotency_key".into(), json!(k));
    }
    if let Some(p) = args.priority {
        obj.insert("priority".into(), json!(p));
    }

    if args.repeat > 1 {
        let bar = indicatif::ProgressBar::new(args.repeat);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs  {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let started = std::time::Instant::now();
        let mut left = args.repeat;
        // Grown as ids come back, not sized by the flag up front.
        let mut ids = Vec::new();
        while left > 0 {
            let n = left.min(BATCH);
            let jobs: Vec<Value> = (0..n).map(|_| job.clone()).collect();
            match client
                .post_json("/v1/jobs/batch", &json!({ "jobs": jobs }))
                .await
            {
                Ok(v) => ids.extend(
                    v["jobs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|j| j["id"].as_str().map(str::to_owned)),
                ),
                Err(e) => {
                    bar.abandon();
                    eprintln!(
                        "{} of {} jobs enqueued before the error",
                        ids.len(),
                        args.repeat
                    );
                    return Ok(report(e));
                }
            }
            bar.inc(n);
            left -= n;
        }
        bar.finish_and_clear();
        // The ids on stdout (one per line, for scripts); the summary on
        // stderr, also when the reader of the ids stopped early.
        let printed = ids.iter().try_for_each(|id| outln!("{id}"));
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        eprintln!(
            "enqueued {} jobs of {} in {:.2} s ({:.0} jobs/s)",
            ids.len(),
            args.task,
            secs,
            ids.len() as f64 / secs
        );
        printed?;
        return Ok(ExitCode::SUCCESS);
    }

    let accepted = match client.post_json("/v1/jobs", &job).await {
        Ok(v) => v,
        Err(e) => return Ok(report(e)),
    };
    let id = accepted["id"].as_str().unwrap_or_default().to_string();
    let Some(wait) = args.wait else {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!("enqueued {id}");
    super::status::wait_and_print(&client, &id, wait).await
}
