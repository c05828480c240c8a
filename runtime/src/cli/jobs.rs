//! `runner jobs list [--queue Q] [--task T] [--state S] [--since 1h] ...`:
//! finds jobs over HTTP (`GET /v1/jobs`), newest first.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::client::{ApiArgs, ApiClient, cell};
use super::out::{self, ListError, outln};

#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub what: JobsWhat,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub enum JobsWhat {
    /// Jobs newest first, filtered; pages are followed until `--limit`
    /// jobs are printed or none is left.
    List(ListArgs),
}

#[derive(Args, Debug, Default)]
pub struct ListArgs {
    #[arg(long, short = 'Q')]
    pub queue: Option<String>,
    #[arg(long)]
    pub task: Option<String>,
    /// PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED or EXPIRED.
    #[arg(long)]
    pub state: Option<String>,
    /// Created at or after: a duration ago (`1h`, `30m`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Created before: a duration ago or an RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Children of this job.
    #[arg(long)]
    pub parent: Option<String>,
    /// Jobs this beat enqueued.
    #[arg(long)]
    pub beat: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Start where an earlier listing stopped (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print the jobs as JSON lines, whole.
    #[arg(long)]
    pub json: bool,
}

impl ListArgs {
    /// The `GET /v1/jobs` path for `limit` more jobs from `cursor`.
    fn path(&self, limit: usize, cursor: Option<&str>) -> String {
        let mut url = reqwest::Url::parse("http://runner/v1/jobs").expect("a valid URL");
        {
            let mut q = url.query_pairs_mut();
            let filters = [
                ("queue", &self.queue),
                ("task", &self.task),
                ("state", &self.state),
                ("since", &self.since),
                ("until", &self.until),
                ("parent", &self.parent),
                ("beat", &self.beat),
            ];
            for (k, v) in filters {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("limit", &limit.to_string());
            if let Some(c) = cursor {
                q.append_pair("cursor", c);
            }
        }
        format!("/v1/jobs?{}", url.query().unwrap_or_default())
    }
}

pub async fn execute(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.api)?;
    out::exit_code(match &args.what {
        JobsWhat::List(list) => print_list(&client, list).await,
    })
}

async fn print_list(client: &ApiClient, args: &ListArgs) -> Result<(), ListError> {
    if !args.json {
        outln!(
            "{:<36} {:<14} {:<20} {:<8} {:<24} FINISHED",
            "JOB",
            "QUEUE",
            "TASK",
            "STATE",
            "CREATED"
        )?;
    }
    let mut cursor = args.cursor.clone();
    let mut printed = 0;
    while printed < args.limit {
        let v = client
            .get(&args.path((args.limit - printed).min(500), cursor.as_deref()))
            .await?;
        for j in v["jobs"].as_array().into_iter().flatten() {
            printed += 1;
            if args.json {
                outln!("{j}")?;
            } else {
                outln!(
                    "{:<36} {:<14} {:<20} {:<8} {:<24} {}",
                    cell(&j["id"]),
                    cell(&j["queue"]),
                    cell(&j["task"]),
                    cell(&j["state"]),
                    cell(&j["created_at"]),
                    cell(&j["finished_at"])
                )?;
            }
        }
        cursor = v["next"].as_str().map(str::to_string);
        if cursor.is_none() {
            return Ok(());
        }
    }
    if let Some(c) = cursor {
        eprintln!("more: add --cursor {c}");
    }
    Ok(())
}
