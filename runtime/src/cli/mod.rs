//! The `runner` command line. Each subcommand lives in its own file with an
//! async `execute()` returning the process exit code; `main` builds the
//! tokio runtime and logging once for all of them.

use std::process::ExitCode;

use std::os::unix::fs::DirBuilderExt as _;

use clap::{Parser, Subcommand};

pub mod beats;
pub mod bench;
pub mod bind;
pub mod call;
pub mod client;
pub mod dev;
pub mod inspect;
pub mod jobs;
pub mod out;
pub mod purge;
pub mod revoke;
pub mod run;
pub mod scheduler;
pub mod serve;
pub mod status;
pub mod upload;
pub mod worker;
pub mod workflow;

#[derive(Parser, Debug)]
#[command(name = "runner", version, about = "WASM-sandboxed task runner")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Everything on this machine: API, worker, scheduler, built-in tasks,
    /// embedded broker (no Redis needed). Prints the URL and an admin token.
    Dev(dev::DevArgs),
    /// The HTTP API (optionally with a worker): `runner serve --config runner.toml`.
    Serve(serve::ServeArgs),
    /// Upload task components over HTTP (`--bind NAME` binds a task name).
    Upload(upload::UploadArgs),
    /// Schedules over HTTP: `runner beats list|show|add|rm|fire|enable|disable`.
    Beats(beats::BeatsArgs),
    /// Bind a task name to a module with defaults and grants (`--rollback`).
    Bind(bind::BindArgs),
    /// Run one component once, locally, and print its output.
    Run(run::RunArgs),
    /// Measure and print performance figures.
    Bench(bench::BenchArgs),
    /// Consume queues: `runner worker -Q mail,ai -c 4`.
    Worker(worker::WorkerArgs),
    /// Fire the beats of runner.toml and the API (any number of replicas).
    Scheduler(scheduler::SchedulerArgs),
    /// Enqueue a job for a task name.
    Call(call::CallArgs),
    /// Show a job's state and result.
    Status(status::StatusArgs),
    /// Revoke a job, or every job of a task or queue (`--terminate` also
    /// stops running ones).
    Revoke(revoke::RevokeArgs),
    /// Purge a queue's waiting jobs (`--yes`; without it, only counts).
    Purge(purge::PurgeArgs),
    /// List queues, workers or dead letters.
    Inspect(inspect::InspectArgs),
    /// Find jobs: `runner jobs list --state FAILURE --task report --since 1h`.
    Jobs(jobs::JobsArgs),
    /// Workflows: `runner workflow submit FILE.json | status ID | watch ID | revoke ID`.
    Workflow(workflow::WorkflowArgs),
}

/// A `RUNNER_*` variable set to nothing is not set: `runner.toml` and the
/// defaults decide, as for the variables `Config::apply_env` reads (an
/// env file's `RUNNER_REDIS_URL=` means "runner.toml's"). The flags that
/// read a variable through clap took `""` as a value: `runner dev` with
/// `RUNNER_REDIS_URL=` tried to connect to "". (`RUNNER_SMTP_PASSWORD` of
/// spaces is a password: `Config::apply_env` takes it as one.)
fn forget_empty_env() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(k, v)| unset_by_empty(k, v))
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        // SAFETY: called first thing in `main`, before the runtime or any
        // other thread starts: nothing reads the environment meanwhile.
        unsafe { std::env::remove_var(k) };
    }
}

/// Whether variable `k`, set to `v`, counts as unset ([`forget_empty_env`]).
fn unset_by_empty(k: &std::ffi::OsStr, v: &std::ffi::OsStr) -> bool {
    k.to_str()
        .is_some_and(|k| k.starts_with("RUNNER_") && k != "RUNNER_SMTP_PASSWORD")
        && v.to_str().is_some_and(|v| v.trim().is_empty())
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    forget_empty_env();
    let cli = Cli::parse();
    init_logging();
    // reqwest (the CLI's client, webhooks) takes rustls's process default.
    runner_host_fns::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::execute(args).await,
            Command::Serve(args) => serve::execute(args).await,
            Command::Upload(args) => upload::execute(args).await,
            Command::Bind(args) => bind::execute(args).await,
            Command::Beats(args) => beats::execute(args).await,
            Command::Run(args) => run::execute(args).await,
            Command::Bench(args) => bench::execute(args).await,
            Command::Worker(args) => worker::execute(args).await,
            Command::Workflow(args) => workflow::execute(args).await,
            Command::Scheduler(args) => scheduler::execute(args).await,
            Command::Call(args) => call::execute(args).await,
            Command::Status(args) => status::execute(args).await,
            Command::Revoke(args) => revoke::execute(args).await,
            Command::Purge(args) => purge::execute(args).await,
            Command::Inspect(args) => inspect::execute(args).await,
            Command::Jobs(args) => jobs::execute(args).await,
        }
    });
    match result {
        Ok(code) => code,
        // `| head` read what it wanted: not an error (`out.rs`).
        Err(e) if out::reader_gone(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr (stdout is for results), `RUST_LOG` filters them.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Fails only if a subscriber is already set, which is then kept.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Where a command keeps compiled modules between processes, so that a
/// component is compiled once per hash on a machine, whatever the command
/// (compiling a Python component takes seconds; reading it back,
/// milliseconds).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// The compiled-module cache (default: `$XDG_CACHE_HOME/runner/modules`,
    /// or `~/.cache/runner/modules`). It must be writable only by the
    /// runner's user: its files are native code. Modules unused for 30
    /// days are removed when a command starts.
    #[arg(long, env = "RUNNER_CACHE_DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Compile every module in this process; keep nothing on disk.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
}

impl CacheArgs {
    /// The directory to use, if any.
    pub fn dir(&self) -> Option<std::path::PathBuf> {
        if self.no_cache {
            return None;
        }
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        // The default is a convenience: a machine where it cannot be made
        // (no home, a read-only one) compiles in every process instead.
        let dir = default_cache_dir()?;
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            Ok(()) => Some(dir),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "not caching compiled modules: {e}");
                None
            }
        }
    }
}

fn default_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| std::path::PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("runner").join("modules"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_runner_variables_count_as_unset_but_a_password_of_spaces() {
        let unset = |k: &str, v: &str| unset_by_empty(k.as_ref(), v.as_ref());
        assert!(unset("RUNNER_REDIS_URL", ""));
        assert!(unset("RUNNER_TOKEN", "  "));
        assert!(!unset("RUNNER_REDIS_URL", "redis://r/0"));
        assert!(!unset("HOME", ""));
        // `Config::apply_env` takes a password of spaces as a password.
        assert!(!unset("RUNNER_SMTP_PASSWORD", "   "));
    }
}
