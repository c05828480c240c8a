//! Deletes the files under `root` matching `glob` that are older than
//! `older_than_secs`, or with `"dry_run": true` only lists them; returns what
//! was deleted, the bytes freed and the root's disk usage. Needs the `files`
//! grant (read-write) for the root.
//! `{"root": "logs", "glob": "**/*.log", "older_than_secs": 604800}`

use std::time::Duration;

use runner_sdk::{Context, TaskError, files, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    root: String,
    glob: String,
    older_than_secs: u64,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Serialize)]
struct Output {
    deleted: Vec<String>,
    bytes_freed: u64,
    dry_run: bool,
    used_by_root: u64,
    free_bytes: u64,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let older_than = Duration::from_secs(input.older_than_secs);
    let report = files::cleanup(&input.root, &input.glob, older_than, input.dry_run)?;
    let usage = files::disk_usage(&input.root)?;
    ctx.info(format!(
        "{} {} files, {} bytes",
        if report.dry_run {
            "would delete"
        } else {
            "deleted"
        },
        report.deleted.len(),
        report.bytes_freed
    ));
    Ok(Output {
        deleted: report.deleted.into_iter().map(|e| e.path).collect(),
        bytes_freed: report.bytes_freed,
        dry_run: report.dry_run,
        used_by_root: usage.used_by_root,
        free_bytes: usage.free_bytes,
    })
}
