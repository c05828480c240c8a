//! One run of a task: a fresh store with its limits, the call, and the
//! classification of how it ended.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::component::ResourceTable;
use wasmtime::{AsContext, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::TaskError;
use super::host::context::LogBook;
use super::host::{HostEnv, LogLine, Progress};
use super::limits::MemoryLimiter;
use super::module::LoadedModule;
use super::pipe::CappedPipe;
use crate::queue::job::{MAX_MESSAGE_BYTES, cap_text};

/// Cancels a run: a revoked job stops at its next epoch check (or at once if
/// it waits in a host call) and ends `Revoked`.
pub use tokio_util::sync::CancellationToken as CancelToken;

/// The fuel a run has used so far, written at every epoch tick while wasm
/// runs (what `inspect active` shows of a running job). Clones share it.
#[derive(Clone, Debug, Default)]
pub struct FuelMeter(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl FuelMeter {
    pub fn used(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, used: u64) {
        self.0.store(used, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What one run may consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimits {
    /// Fuel budget (roughly, wasm instructions). `None`: unlimited; the time
    /// limit still applies.
    pub fuel: Option<u64>,
    /// Linear memory, summed over the component's memories. Capped by
    /// `SandboxConfig::max_memory_bytes`.
    pub memory_bytes: u64,
    /// Wall-clock time from the start of the run, instantiation included.
    pub timeout: Duration,
    /// After this long (shorter than `timeout` to be of use), every
    /// capability call is denied with "soft time limit ...", so that the
    /// task can finish up before the hard limit stops it.
    pub soft_timeout: Option<Duration>,
    /// Cap on each of stdout, stderr and the total of log messages; past
    /// it, output is dropped (and reported as truncated), not an error.
    pub output_cap_bytes: usize,
    /// Cap on the JSON the task returns; a larger result is `InvalidOutput`.
    pub result_cap_bytes: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            fuel: None,
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
            soft_timeout: None,
            output_cap_bytes: 1 << 20,
            result_cap_bytes: 1 << 20,
        }
    }
}

/// The job a run is for, as the task sees it through `context.job`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    /// 1 on the first run.
    pub attempt: u32,
    pub max_retries: u32,
    pub queue: String,
    /// Empty when run by hash.
    pub task: String,
    pub schedule: Option<String>,
    /// RFC 3339, UTC.
    pub scheduled_for: Option<String>,
}

impl Default for JobInfo {
    fn default() -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            attempt: 1,
            max_retries: 0,
            queue: "default".into(),
            task: String::new(),
            schedule: None,
            scheduled_for: None,
        }
    }
}

/// Everything a run needs besides the module.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// JSON text, passed to the task as is.
    pub input: String,
    pub limits: RunLimits,
    pub job: JobInfo,
    pub host: HostEnv,
    pub cancel: CancelToken,
    /// Where the run reports the fuel it used so far (when fuel is metered).
    pub meter: FuelMeter,
}

impl RunRequest {
    /// A run with default limits, a fresh job id and no capabilities.
    pub fn new(input: impl Into<String>) -> Self {
        Self {
            input: input.into(),
            ..Self::default()
        }
    }
}

/// How a run ended. Every way is distinct, so that the worker's retry
/// policy, the API and `runner run`'s exit code can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// The task returned this JSON.
    Success(String),
    /// The task returned `task-error::retry`: a transient failure.
    Retry(String),
    /// The task returned `task-error::fail`: a permanent failure.
    Fail(String),
    /// The fuel budget ran out.
    FuelExhausted,
    /// The task wanted more memory than its limit.
    MemoryLimit,
    /// The wall-clock limit passed.
    TimeLimit,
    /// The run was cancelled (revoke with terminate).
    Revoked,
    /// The guest trapped: a panic, `unreachable`, an out-of-bounds access,
    /// `exit`. `message` carries a panic's message when the guest printed
    /// one; `backtrace` is the wasm backtrace.
    Trap {
        message: String,
        backtrace: Option<String>,
    },
    /// The task returned something that is not JSON, or too much of it.
    InvalidOutput(String),
    /// The runner could not run the task (no instance slot, a broken host
    /// invariant): not the task's fault; worth retrying elsewhere or later.
    HostFailure(String),
}

impl Outcome {
    /// A short stable name: `success`, `fuel_exhausted`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::Retry(_) => "retry",
            Outcome::Fail(_) => "fail",
            Outcome::FuelExhausted => "fuel_exhausted",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::TimeLimit => "time_limit",
            Outcome::Revoked => "revoked",
            Outcome::Trap { .. } => "trap",
            Outcome::InvalidOutput(_) => "invalid_output",
            Outcome::HostFailure(_) => "host_failure",
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success(output) => write!(f, "success: {output}"),
            Outcome::Retry(message) => write!(f, "task asked to retry: {message}"),
            Outcome::Fail(message) => write!(f, "task failed: {message}"),
            Outcome::FuelExhausted => f.write_str("fuel exhausted"),
            Outcome::MemoryLimit => f.write_str("memory limit reached"),
            Outcome::TimeLimit => f.write_str("time limit reached"),
            Outcome::Revoked => f.write_str("revoked"),
            Outcome::Trap { message, .. } => write!(f, "trap: {message}"),
            Outcome::InvalidOutput(why) => write!(f, "invalid output: {why}"),
            Outcome::HostFailure(why) => write!(f, "runner failure: {why}"),
        }
    }
}

/// The most bytes one `wasi:random` call may ask for; more traps. The
/// host makes them before the guest sees any, outside the run's memory
/// limit and fuel (WASI's own default is 64 MiB).
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// The most resources (WASI streams, pollables, ...) a run may hold at
/// once; one more traps. Each lives in host memory, outside the run's
/// memory limit (WASI's own default is a million).
pub const MAX_RESOURCES: usize = 10_000;

/// How a run ended and what it left behind.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub stdout: String,
    pub stdout_truncated: bool,
    pub stderr: String,
    pub stderr_truncated: bool,
    pub logs: Vec<LogLine>,
    /// Log lines dropped past the output cap.
    pub logs_dropped: u64,
    pub last_progress: Option<Progress>,
    /// Fuel consumed; `None` when the engine does not meter fuel.
    pub fuel_used: Option<u64>,
    /// The most linear memory the run had (summed over its memories; wasm
    /// memories never shrink, so this is what it had at the end).
    pub memory_peak_bytes: u64,
    pub duration: Duration,
}

impl RunReport {
    /// The report of a run that ended as `outcome` before it started.
    pub(crate) fn not_run(outcome: Outcome) -> RunReport {
        RunReport {
            outcome,
            stdout: String::new(),
            stdout_truncated: false,
            stderr: String::new(),
            stderr_truncated: false,
            logs: Vec::new(),
            logs_dropped: 0,
            last_progress: None,
            fuel_used: None,
            memory_peak_bytes: 0,
            duration: Duration::ZERO,
        }
    }
}

/// The data of a run's store: what host functions see.
pub(crate) struct RunState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) host: HostEnv,
    pub(crate) job: JobInfo,
    pub(crate) logs: LogBook,
    pub(crate) last_progress: Option<Progress>,
    pub(crate) started: Instant,
    pub(crate) deadline: Instant,
    /// After this, every capability call is denied ("soft time limit").
    pub(crate) soft_deadline: Option<Instant>,
    /// The run's fuel budget (when metered) and what it used so far.
    pub(crate) fuel_budget: Option<u64>,
    pub(crate) meter: FuelMeter,
    pub(crate) cancel: CancelToken,
    /// Failed host calls of this run so far: the first few are logged at
    /// `info` (`host/mod.rs`), the rest at `debug`.
    pub(crate) failed_calls: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

#[cfg(test)]
impl RunState {
    /// A store's data without a store, for calling host functions directly.
    pub(crate) fn for_tests(host: HostEnv) -> Self {
        let started = Instant::now();
        Self {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(1 << 20),
            host,
            job: JobInfo::default(),
            logs: LogBook::new(1 << 10),
            last_progress: None,
            started,
            deadline: started + Duration::from_secs(30),
            soft_deadline: None,
            fuel_budget: None,
            meter: FuelMeter::default(),
            cancel: CancelToken::new(),
            failed_calls: Default::default(),
        }
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Why a run was stopped: a marker carried by the trap, raised by the
/// epoch callback while wasm runs and by the host-call wrapper while a host
/// call waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stopped {
    #[error("time limit reached")]
    TimeLimit,
    #[error("revoked")]
    Revoked,
}

/// The settings of the sandbox a run needs.
pub(crate) struct RunEnv<'a> {
    pub(crate) engine: &'a wasmtime::Engine,
    pub(crate) max_memory_bytes: u64,
    pub(crate) fuel_metering: bool,
    pub(crate) fuel_yield_interval: u64,
}

pub(crate) async fn run(env: RunEnv<'_>, module: &LoadedModule, req: RunRequest) -> RunReport {
    let started = Instant::now();
    let RunRequest {
        input,
        limits,
        job,
        host,
        cancel,
        meter,
    } = req;

    let stdout = CappedPipe::new(limits.output_cap_bytes);
    let stderr = CappedPipe::new(limits.output_cap_bytes);
    // No preopened directory, no environment, no arguments, no network:
    // files, HTTP and mail go through the granted `runner:task` imports.
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .max_random_size(MAX_RANDOM_BYTES)
        .build();
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    let deadline = started + limits.timeout;
    let state = RunState {
        wasi,
        table,
        limiter: MemoryLimiter::new(limits.memory_bytes.min(env.max_memory_bytes)),
        host,
        job,
        logs: LogBook::new(limits.output_cap_bytes),
        last_progress: None,
        started,
        deadline,
        soft_deadline: limits.soft_timeout.map(|t| started + t),
        fuel_budget: env.fuel_metering.then(|| limits.fuel.unwrap_or(u64::MAX)),
        meter: meter.clone(),
        cancel: cancel.clone(),
        failed_calls: Default::default(),
    };
    let mut store = Store::new(env.engine, state);
    store.limiter(|state| &mut state.limiter);

    let mut budget = None;
    let mut setup = Ok(());
    if env.fuel_metering {
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        budget = Some(fuel);
        setup = store
            .set_fuel(fuel)
            .and_then(|()| store.fuel_async_yield_interval(Some(env.fuel_yield_interval)));
    }
    // Every tick: give the executor back, then check the deadline and the
    // cancel token.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |ctx| {
        if let Some(budget) = budget {
            meter.set(budget.saturating_sub(ctx.as_context().get_fuel().unwrap_or(0)));
        }
        let state = ctx.data();
        if state.cancel.is_cancelled() {
            return Err(Stopped::Revoked.into());
        }
        if Instant::now() >= state.deadline {
            return Err(Stopped::TimeLimit.into());
        }
        Ok(UpdateDeadline::Yield(1))
    });

    let mut instantiated = false;
    let result = match setup {
        Err(e) => Err(e),
        Ok(()) => {
            let call = async {
                let task = module.pre.instantiate_async(&mut store).await?;
                instantiated = true;
                task.call_run(&mut store, &input).await
            };
            // Epoch checks only happen while wasm runs; a guest waiting in a
            // host call (a sleep, an HTTP request) is stopped here instead.
            tokio::select! {
                biased;
                result = call => result,
                () = cancel.cancelled() => Err(Stopped::Revoked.into()),
                () = tokio::time::sleep_until(deadline.into()) => Err(Stopped::TimeLimit.into()),
            }
        }
    };

    let fuel_used = budget.map(|budget| budget.saturating_sub(store.get_fuel().unwrap_or(0)));
    let state = store.into_data();
    let (stdout, stdout_truncated) = stdout.take();
    let (stderr, stderr_truncated) = stderr.take();

    let outcome = match result {
        Ok(Ok(output)) => check_output(output, limits.result_cap_bytes),
        // The task's own words: capped before they reach a log or a record.
        Ok(Err(TaskError::Retry(message))) => Outcome::Retry(cap_text(message, MAX_MESSAGE_BYTES)),
        Ok(Err(TaskError::Fail(message))) => Outcome::Fail(cap_text(message, MAX_MESSAGE_BYTES)),
        Err(error) => classify(&error, state.limiter.hit, instantiated, &stderr),
    };

    RunReport {
        outcome,
        stdout,
        stdout_truncated,
        stderr,
        stderr_truncated,
        logs: state.logs.lines,
        logs_dropped: state.logs.dropped,
        last_progress: state.last_progress,
        fuel_used,
        memory_peak_bytes: state.limiter.used() as u64,
        duration: started.elapsed(),
    }
}

fn check_output(output: String, cap: usize) -> Outcome {
    if output.len() > cap {
        return Outcome::InvalidOutput(format!(
            "the output is {} bytes, above the cap of {cap} bytes",
            output.len()
        ));
    }
    match serde_json::from_str::<serde::de::IgnoredAny>(&output) {
        Ok(_) => Outcome::Success(output),
        Err(e) => Outcome::InvalidOutput(format!("the output is not JSON: {e}")),
    }
}

fn classify(
    error: &wasmtime::Error,
    memory_hit: bool,
    instantiated: bool,
    stderr: &str,
) -> Outcome {
    if let Some(stopped) = error.downcast_ref::<Stopped>() {
        return match stopped {
            Stopped::TimeLimit => Outcome::TimeLimit,
            Stopped::Revoked => Outcome::Revoked,
        };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return Outcome::FuelExhausted;
    }
    // Checked before anything else the guest did: a denied allocation ends
    // in an abort or `unreachable` that would otherwise look like a bug.
    if memory_hit {
        return Outcome::MemoryLimit;
    }
    // What fails while a start function runs is the guest's: a trap, an
    // `exit`, a host call it made wrongly (such errors carry the guest's
    // backtrace). Anything else failing before `run` is ours (no pool
    // slot, a broken link).
    let guests = error.downcast_ref::<Trap>().is_some()
        || error.downcast_ref::<I32Exit>().is_some()
        || error.downcast_ref::<WasmBacktrace>().is_some();
    if !instantiated && !guests {
        return Outcome::HostFailure(format!("cannot instantiate the module: {error:#}"));
    }
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(|bt| cap_text(bt.to_string(), MAX_MESSAGE_BYTES))
        .filter(|bt| !bt.trim().is_empty());
    let message = if let Some(exit) = error.downcast_ref::<I32Exit>() {
        format!("the task called exit({}) instead of returning", exit.0)
    } else if let Some(panic) = panic_message(stderr) {
        panic
    } else if let Some(trap) = error.downcast_ref::<Trap>() {
        trap.to_string()
    } else {
        // A host function trapped: the error chain says which.
        format!("{error:#}")
    };
    Outcome::Trap {
        message: cap_text(message, MAX_MESSAGE_BYTES),
        backtrace,
    }
}

/// The message of a Rust panic as the standard library prints it to stderr:
/// `thread '..' panicked at src/lib.rs:4:5:` then the message lines.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at ")?;
    let rest = &stderr[start..];
    let mut lines = rest.lines();
    let location = lines.next()?.trim_end_matches(':');
    let message: Vec<&str> = lines
        .take_while(|line| !line.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let message = message.join("\n");
    let message = message.trim();
    Some(if message.is_empty() {
        location.to_string()
    } else {
        format!("{location}: {message}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_message_is_taken_from_stderr() {
        let stderr = "starting\nthread '<unnamed>' panicked at src/lib.rs:12:5:\nsomething broke: 42\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("panicked at src/lib.rs:12:5: something broke: 42")
        );
        assert_eq!(panic_message("no panic here"), None);
    }

    #[test]
    fn output_must_be_json_within_the_cap() {
        assert_eq!(
            check_output("{\"a\":1}".into(), 100),
            Outcome::Success("{\"a\":1}".into())
        );
        assert!(matches!(
            check_output("hello".into(), 100),
            Outcome::InvalidOutput(_)
        ));
        assert!(matches!(
            check_output("[1,2,3]".into(), 3),
            Outcome::InvalidOutput(_)
        ));
    }
}
