//! `runner beats list|show|add|rm|fire|enable|disable`: the schedules, over
//! HTTP. `add` creates or replaces a beat:
//! `runner beats add morning --task reminder --cron "0 9 * * *" --tz Asia/Tokyo --input '{..}'`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{ApiArgs, ApiClient, api_path, cell, json_arg, report, text_or_file};
use super::out::{self, ListError, outln};

#[derive(Args, Debug)]
pub struct BeatsArgs {
    #[command(subcommand)]
    pub what: BeatsCommand,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub enum BeatsCommand {
    /// Every beat: schedule, zone, next and last fire, last job's outcome.
    List,
    /// One beat, in full (JSON).
    Show {
        name: String,
    },
    /// Create or replace a beat.
    Add {
        name: String,
        #[arg(long)]
        task: String,
        /// Crontab line: 5 fields, 6 with seconds first, or @daily style.
        #[arg(long, conflicts_with = "every", required_unless_present = "every")]
        cron: Option<String>,
        /// Interval: 30s, 5m, 1h.
        #[arg(long)]
        every: Option<String>,
        /// IANA time zone, e.g. Asia/Tokyo (default UTC).
        #[arg(long = "tz")]
        timezone: Option<String>,
        /// JSON input of each job (`@file.json` reads a file).
        #[arg(long)]
        input: Option<String>,
        #[arg(long, short = 'Q')]
        queue: Option<String>,
        /// Missed fires after downtime: skip (default) or catch-up-once.
        #[arg(long)]
        missed: Option<String>,
        /// Store it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Delete a beat created through the API.
    Rm {
        name: String,
    },
    /// Enqueue a beat's job now.
    Fire {
        name: String,
        /// Wait this long for the job to end and print it.
        #[arg(long, value_parser = crate::config::parse_bounded_duration, num_args = 0..=1, default_missing_value = "60s")]
        wait: Option<std::time::Duration>,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
}

pub async fn execute(args: BeatsArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&args.api)?;
    let result = match args.what {
        BeatsCommand::List => return out::exit_code(list(&client).await),
        BeatsCommand::Show { name } => client
            .get(&api_path(&["v1", "schedules", &name]))
            .await
            .map(|v| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())),
        BeatsCommand::Add {
            name,
            task,
            cron,
            every,
            timezone,
            input,
            queue,
            missed,
            disabled,
        } => {
            let mut beat = json!({ "task": task, "enabled": !disabled });
            let obj = beat.as_object_mut().expect("object");
            if let Some(c) = cron {
                obj.insert("cron".into(), json!(c));
            }
            if let Some(e) = every {
                obj.insert("every".into(), json!(e));
            }
            if let Some(t) = timezone {
                obj.insert("timezone".into(), json!(t));
            }
            if let Some(q) = queue {
                obj.insert("queue".into(), json!(q));
            }
            if let Some(m) = missed {
                obj.insert("missed".into(), json!(m));
            }
            if let Some(i) = input {
                obj.insert("input".into(), json_arg("--input", &text_or_file(&i)?)?);
            }
            client
                .put_json(&api_path(&["v1", "schedules", &name]), &beat)
                .await
                .map(|v| {
                    println!(
                        "{name}: next fire {} ({})",
                        cell(&v["next_fire"]["local"]),
                        cell(&v["next_fire"]["utc"])
                    );
                })
        }
        BeatsCommand::Rm { name } => client
            .send(client.request(Method::DELETE, &api_path(&["v1", "schedules", &name])))
            .await
            .map(|_| println!("deleted {name}")),
        BeatsCommand::Fire { name, wait } => match client
            .post_json(&api_path(&["v1", "schedules", &name, "fire"]), &json!({}))
            .await
        {
            Ok(job) => {
                let id = cell(&job["id"]);
                match wait {
                    Some(w) => return super::status::wait_and_print(&client, &id, w).await,
                    None => {
                        println!("{id}");
                        Ok(())
                    }
                }
            }
            Err(e) => Err(e),
        },
        BeatsCommand::Enable { name } => client
            .post_json(&api_path(&["v1", "schedules", &name, "enable"]), &json!({}))
            .await
            .map(|_| println!("enabled {name}")),
        BeatsCommand::Disable { name } => client
            .post_json(
                &api_path(&["v1", "schedules", &name, "disable"]),
                &json!({}),
            )
            .await
            .map(|_| println!("disabled {name}")),
    };
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    })
}

/// Every beat, a line each.
async fn list(client: &ApiClient) -> Result<(), ListError> {
    let v = client.get("/v1/schedules").await?;
    outln!(
        "{:<22} {:<14} {:<18} {:<16} {:<26} LAST JOB",
        "BEAT",
        "TASK",
        "SCHEDULE",
        "ZONE",
        "NEXT FIRE (LOCAL)"
    )?;
    for b in v.as_array().into_iter().flatten() {
        let schedule = b["cron"]
            .as_str()
            .map(str::to_string)
            .or_else(|| b["every"].as_str().map(|e| format!("every {e}")))
            .unwrap_or_default();
        let next = if b["enabled"] == false {
            "disabled".to_string()
        } else {
            cell(&b["next_fire"]["local"])
        };
        let last = match &b["last_job"] {
            Value::Null => "-".to_string(),
            j => format!("{} {}", cell(&j["id"]), cell(&j["state"])),
        };
        outln!(
            "{:<22} {:<14} {:<18} {:<16} {:<26} {}",
            cell(&b["name"]),
            cell(&b["task"]),
            schedule,
            cell(&b["timezone"]),
            next,
            last
        )?;
    }
    Ok(())
}
