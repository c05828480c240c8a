//! `runner run <module.wasm> --input '<json>'`: runs one component once,
//! locally, with no broker (so no `jobs` capability).
//!
//! With `--config runner.toml`, the services of its `[host]` section are
//! available, and `--task NAME` runs with the grants of
//! `[tasks.NAME.grants]` (the format is in [`crate::config`] and
//! [`crate::sandbox::host::services`]); the file is read as every command
//! reads it, environment overrides (`RUNNER_SMTP_*`, ...) included. Without `--task` nothing is granted:
//! a configured service answers `denied`, any other `unavailable`.
//!
//! The task's output JSON goes to stdout; everything else (its log lines,
//! progress, its own stdout and stderr, the failure) goes to stderr. The
//! exit code tells how the run ended:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success: the output JSON is on stdout |
//! | 1 | the runner itself failed |
//! | 2 | bad input or usage: unreadable file, not wasm, core module, wrong world, unknown import, invalid input JSON, bad option |
//! | 10 | the task failed (`task-error::fail`) |
//! | 11 | the task asked to be retried (`task-error::retry`) |
//! | 12 | fuel exhausted |
//! | 13 | memory limit reached |
//! | 14 | time limit reached |
//! | 15 | trap (panic, `unreachable`, ...) |
//! | 16 | invalid output (not JSON, or too large) |
//! | 17 | interrupted (Ctrl-C) |
//! | 18 | the sandbox could not run the task |

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Args;

use crate::app;
use crate::config::Config;
use crate::registry::TaskGrants;
use crate::sandbox::host::HostServices;
use crate::sandbox::{
    CancelToken, HostEnv, JobInfo, LogLine, Outcome, Progress, RunLimits, RunReport, RunRequest,
    Sandbox, SandboxConfig,
};

/// Exit codes of `runner run`, one per way a run ends.
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const RUNNER_ERROR: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const FAIL: u8 = 10;
    pub const RETRY: u8 = 11;
    pub const FUEL_EXHAUSTED: u8 = 12;
    pub const MEMORY_LIMIT: u8 = 13;
    pub const TIME_LIMIT: u8 = 14;
    pub const TRAP: u8 = 15;
    pub const INVALID_OUTPUT: u8 = 16;
    pub const INTERRUPTED: u8 = 17;
    pub const HOST_FAILURE: u8 = 18;
}

#[derive(Args, Debug)]
#[command(
    after_help = "Exit codes: 0 success, 2 bad input or usage, 10 fail, 11 retry, \
    12 fuel exhausted, 13 memory limit, 14 time limit, 15 trap, 16 invalid output, \
    17 interrupted, 18 sandbox failure, 1 runner error."
)]
pub struct RunArgs {
    /// The task component (`.wasm`, built for wasm32-wasip2).
    pub module: PathBuf,
    /// The task's input, JSON text.
    #[arg(long, short, default_value = "{}")]
    pub input: String,
    /// Fuel budget (roughly, wasm instructions). Unlimited when absent.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory limit, e.g. `64MiB`.
    #[arg(long, default_value = "64MiB")]
    pub memory: ByteSize,
    /// Wall-clock limit, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "30s", value_parser = crate::config::parse_bounded_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub cache: super::CacheArgs,
    /// `runner.toml` with the `[host]` services and the tasks' grants.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run as this task: its name namespaces kv keys, and with `--config`
    /// its `[tasks.NAME.grants]` apply.
    #[arg(long)]
    pub task: Option<String>,
    /// Also print the duration and fuel used.
    #[arg(long, short)]
    pub verbose: bool,
}

const MAX_MEMORY_BYTES: u64 = 4 << 30;

pub async fn execute(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Installed first: Ctrl-C while compiling must not kill the process
    // without a word either.
    let cancel = CancelToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.cancel();
        }
    });
    // Checked before anything runs: a typo must not cost a compile.
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&args.input) {
        eprintln!("error: --input is not valid JSON: {e}");
        return Ok(ExitCode::from(exit::BAD_INPUT));
    }
    if args.memory.as_u64() > MAX_MEMORY_BYTES {
        eprintln!(
            "error: --memory {} is above the 4 GiB a wasm32 memory can address",
            args.memory
        );
        return Ok(ExitCode::from(exit::BAD_INPUT));
    }
    let bytes = match tokio::fs::read(&args.module).await {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.module.display());
            return Ok(ExitCode::from(exit::BAD_INPUT));
        }
    };

    let (services, grants) = match host_for(&args).await {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(exit::BAD_INPUT));
        }
    };

    let defaults = SandboxConfig::default();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: args.cache.dir(),
        max_memory_bytes: args.memory.as_u64().max(defaults.max_memory_bytes),
        // One run: no need for large pools.
        max_concurrent_runs: 4,
        ..defaults
    })?;
    let loader = sandbox.clone();
    let module = match tokio::task::spawn_blocking(move || loader.load(&bytes)).await? {
        Ok(module) => module,
        Err(e) => {
            eprintln!("error: {}: {e}", args.module.display());
            return Ok(ExitCode::from(exit::BAD_INPUT));
        }
    };

    let task = args.task.clone().unwrap_or_default();
    let host = HostEnv {
        progress: Some(Arc::new(print_progress)),
        ..services.env_for(&task, &grants, None)
    };
    let request = RunRequest {
        input: args.input.clone(),
        limits: RunLimits {
            fuel: args.fuel,
            memory_bytes: args.memory.as_u64(),
            timeout: args.timeout,
            ..RunLimits::default()
        },
        job: JobInfo {
            task,
            ..JobInfo::default()
        },
        host,
        cancel,
        meter: Default::default(),
    };
    let report = sandbox.run(&module, request).await;
    print_guest_output(&report);
    if args.verbose {
        let fuel = report
            .fuel_used
            .map_or_else(String::new, |fuel| format!(", {fuel} fuel"));
        eprintln!(
            "runner: {} in {:?}{fuel}",
            report.outcome.kind(),
            report.duration
        );
    }
    Ok(ExitCode::from(print_outcome(&report, &args)))
}

/// The services of the config's `[host]` (none without `--config`) and the
/// grants of `--task` (none without it), read as every command reads
/// `runner.toml` (environment overrides included).
async fn host_for(args: &RunArgs) -> anyhow::Result<(HostServices, TaskGrants)> {
    let config = Config::load_or_default(args.config.as_deref())?;
    let grants = match (&args.config, &args.task) {
        (Some(path), Some(name)) => config
            .tasks
            .get(name)
            .map(|t| t.grants.clone())
            .ok_or_else(|| anyhow::anyhow!("{}: no [tasks.{name}] section", path.display()))?,
        _ => TaskGrants::default(),
    };
    Ok((app::host_services(&config).await?, grants))
}

fn print_progress(progress: &Progress) {
    let message = progress.message.as_deref().unwrap_or("");
    eprintln!("progress: {}/{} {message}", progress.done, progress.total);
}

fn print_guest_output(report: &RunReport) {
    for LogLine { level, message, at } in &report.logs {
        eprintln!(
            "[{:>6.1}ms {level:<5}] {message}",
            at.as_secs_f64() * 1000.0
        );
    }
    if report.logs_dropped > 0 {
        eprintln!(
            "({} more log lines dropped: over the output cap)",
            report.logs_dropped
        );
    }
    for (name, text, truncated) in [
        ("stdout", &report.stdout, report.stdout_truncated),
        ("stderr", &report.stderr, report.stderr_truncated),
    ] {
        if text.is_empty() {
            continue;
        }
        eprintln!("--- task {name} ---");
        eprint!("{text}");
        if !text.ends_with('\n') {
            eprintln!();
        }
        if truncated {
            eprintln!("(task {name} truncated: over the output cap)");
        }
    }
}

fn print_outcome(report: &RunReport, args: &RunArgs) -> u8 {
    match &report.outcome {
        Outcome::Success(output) => {
            println!("{output}");
            exit::SUCCESS
        }
        Outcome::Fail(message) => {
            eprintln!("error: the task failed: {message}");
            exit::FAIL
        }
        Outcome::Retry(message) => {
            eprintln!("error: the task asked to be retried: {message}");
            exit::RETRY
        }
        Outcome::FuelExhausted => {
            let budget = args
                .fuel
                .map_or_else(String::new, |f| format!(" (budget {f})"));
            eprintln!("error: fuel exhausted{budget}");
            exit::FUEL_EXHAUSTED
        }
        Outcome::MemoryLimit => {
            eprintln!(
                "error: memory limit reached ({})",
                args.memory.display().iec()
            );
            exit::MEMORY_LIMIT
        }
        Outcome::TimeLimit => {
            eprintln!(
                "error: time limit reached ({})",
                humantime::format_duration(args.timeout)
            );
            exit::TIME_LIMIT
        }
        Outcome::Revoked => {
            eprintln!("error: interrupted");
            exit::INTERRUPTED
        }
        Outcome::Trap { message, backtrace } => {
            eprintln!("error: the task trapped: {message}");
            if let Some(backtrace) = backtrace {
                eprintln!("{backtrace}");
            }
            exit::TRAP
        }
        Outcome::InvalidOutput(why) => {
            eprintln!("error: invalid output: {why}");
            exit::INVALID_OUTPUT
        }
        Outcome::HostFailure(why) => {
            eprintln!("error: the sandbox could not run the task: {why}");
            exit::HOST_FAILURE
        }
    }
}
