//! Running one job: its module (compiled once per worker) and the grants
//! of the binding that bound it, its host environment (services as far as
//! the grants allow, child jobs through the producer, progress forwarded),
//! the sandbox run, and the settlement of its outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::future::Future;
use std::panic::AssertUnwindSafe;

use chrono::Utc;
use futures::FutureExt as _;
use tokio::time::Instant;

use super::settle::{
    dead, finish, record_children, record_last_progress, record_usage, retry_or_fail,
    settlement_for,
};
use super::{CachedGrants, GRANTS_CACHE_FOR, GRANTS_CACHE_MAX, RunCtx, progress};
use crate::producer::ChildJobs;
use crate::queue::job::{
    LOG_LINE_OVERHEAD, LogEntry, MAX_MESSAGE_BYTES, MAX_RECORD_LOG_BYTES, cap_text,
};
use crate::queue::{Completion, Delivery, Job, JobState, Settlement};
use crate::registry::{ModuleHash, RegistryError, TaskGrants};
use crate::sandbox::host::JobEnqueuer;
use crate::sandbox::{
    CancelToken, FuelMeter, JobInfo, LoadedModule, LogLine, RunLimits, RunReport, RunRequest,
};

/// Runs one delivery to its settlement; a panic while it runs is settled
/// too (see [`caught`]).
/// The run reports the fuel it uses to `meter` as it goes.
pub(super) async fn execute(
    ctx: &RunCtx,
    d: &Delivery,
    cancel: CancelToken,
    meter: FuelMeter,
) -> Completion {
    caught(d, run_to_completion(ctx, d, cancel, meter)).await
}

/// `run`'s completion of `d`, or, when it panics, an infrastructure
/// failure of `d` (retried under its policy): the job's slot and lease are
/// settled like any other end, never held by a task that is gone.
pub(super) async fn caught(d: &Delivery, run: impl Future<Output = Completion>) -> Completion {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(completion) => completion,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let what = crate::queue::job::cap_text(what, 1024);
            tracing::error!(job = %d.job.id, panic = %what, "running a job panicked");
            Completion {
                lease: d.lease.clone(),
                settlement: retry_or_fail(
                    d,
                    "infrastructure",
                    format!("the worker panicked running it: {what}"),
                ),
                had_progress: false,
            }
        }
    }
}

async fn run_to_completion(
    ctx: &RunCtx,
    d: &Delivery,
    cancel: CancelToken,
    meter: FuelMeter,
) -> Completion {
    let started = Instant::now();
    let had_progress = Arc::new(AtomicBool::new(false));
    let settlement = run_job(ctx, d, cancel, meter, had_progress.clone()).await;
    count_job(d, &settlement, started.elapsed());
    Completion {
        lease: d.lease.clone(),
        settlement,
        had_progress: had_progress.load(Ordering::Relaxed),
    }
}

/// `runner_jobs_total{queue,task,outcome}`, `runner_job_seconds{queue,task}`
/// and `runner_job_wait_seconds{queue,task}` for one delivery that ended. `task` is empty for a job enqueued by module
/// hash; `outcome` is the final state (`success`, `failure`, `revoked`,
/// `expired`), `retry`, or `released` (handed back on shutdown).
fn count_job(d: &Delivery, settlement: &Settlement, took: Duration) {
    let outcome = match settlement {
        Settlement::Finish { job, .. } => match job.state {
            JobState::Success => "success",
            JobState::Failure => "failure",
            JobState::Revoked => "revoked",
            JobState::Expired => "expired",
            // Not a final state; never settled with Finish.
            _ => "other",
        },
        Settlement::Retry { .. } => "retry",
        Settlement::Release { .. } => "released",
    };
    let queue = d.lease.queue.clone();
    let task = d.job.task.clone().unwrap_or_default();
    metrics::counter!(
        "runner_jobs_total",
        "queue" => queue.clone(),
        "task" => task.clone(),
        "outcome" => outcome,
    )
    .increment(1);
    // From when it could first run (its due time, else its enqueue) to
    // this start.
    let ready_at = d.job.eta.unwrap_or(d.job.created_at);
    let waited = (d.leased_at - ready_at).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::histogram!("runner_job_wait_seconds", "queue" => queue.clone(), "task" => task.clone())
        .record(waited);
    if let Settlement::Finish { dead: true, .. } = settlement {
        metrics::counter!("runner_dead_letters_total", "queue" => queue.clone()).increment(1);
    }
    metrics::histogram!("runner_job_seconds", "queue" => queue, "task" => task)
        .record(took.as_secs_f64());
}

/// The grants a job runs with: those of the binding of its task that bound
/// its module. `None` when the job has no task, or no binding of the task
/// ever bound that module.
async fn grants_for(
    ctx: &RunCtx,
    task: Option<&str>,
    module: &ModuleHash,
) -> Result<Option<Arc<TaskGrants>>, RegistryError> {
    let Some(task) = task else {
        return Ok(None);
    };
    let key = (task.to_string(), *module);
    if let Some(cached) = lock(&ctx.grants).get(&key)
        && cached.read_at.elapsed() < GRANTS_CACHE_FOR
    {
        return Ok(cached.grants.clone());
    }
    let current = ctx.registry.task(task).await?;
    let binding = match current {
        Some(b) if b.module == *module => Some(b),
        _ => ctx
            .registry
            .history(task)
            .await?
            .into_iter()
            .find(|b| b.module == *module),
    };
    let grants = binding.map(|b| Arc::new(b.grants));
    let mut cache = lock(&ctx.grants);
    if cache.len() >= GRANTS_CACHE_MAX {
        cache.clear();
    }
    cache.insert(
        key,
        CachedGrants {
            grants: grants.clone(),
            read_at: Instant::now(),
        },
    );
    Ok(grants)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn resolve(
    ctx: &RunCtx,
    d: &Delivery,
) -> Result<(ModuleHash, Arc<LoadedModule>), Settlement> {
    let hash = match d.job.module {
        Some(h) => h,
        None => match &d.job.task {
            Some(t) => match ctx.registry.task(t).await {
                Ok(Some(b)) => b.module,
                Ok(None) => {
                    return Err(dead(
                        d,
                        "unknown_task",
                        format!("task {t:?} is not bound to a module"),
                    ));
                }
                Err(e) => return Err(retry_or_fail(d, "infrastructure", format!("registry: {e}"))),
            },
            None => {
                return Err(dead(d, "invalid", "job has neither task nor module"));
            }
        },
    };
    if let Some(m) = ctx.sandbox.get(&hash) {
        metrics::counter!("runner_module_cache_total", "result" => "hit").increment(1);
        return Ok((hash, m));
    }
    let cell = lock(&ctx.loads).entry(hash).or_default().clone();
    // The first run that needs the module loads it; those that need it
    // meanwhile wait for that load (a failed load leaves the next to try).
    let mut loaded_here = false;
    let m = cell
        .get_or_try_init(|| {
            loaded_here = true;
            load(ctx, d, hash)
        })
        .await
        .cloned();
    if loaded_here {
        // Loaded (the sandbox keeps it) or failed: the next run that needs
        // it starts afresh. Only this load's entry goes.
        let mut loads = lock(&ctx.loads);
        if loads.get(&hash).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            loads.remove(&hash);
        }
    }
    let m = m?;
    let result = if loaded_here { "miss" } else { "hit" };
    metrics::counter!("runner_module_cache_total", "result" => result).increment(1);
    Ok((hash, m))
}

/// Reads module `hash` from the registry and loads it (compiled, or read
/// from the on-disk cache of compiled modules) off the executor.
async fn load(
    ctx: &RunCtx,
    d: &Delivery,
    hash: ModuleHash,
) -> Result<Arc<LoadedModule>, Settlement> {
    let bytes = match ctx.registry.module(&hash).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(dead(
                d,
                "unknown_module",
                format!("module {hash} is not in the registry"),
            ));
        }
        Err(e) => return Err(retry_or_fail(d, "infrastructure", format!("registry: {e}"))),
    };
    let sandbox = ctx.sandbox.clone();
    // Compiling takes real CPU time: keep it off the executor.
    let started = std::time::Instant::now();
    ctx.loading.fetch_add(1, Ordering::Relaxed);
    let loaded = tokio::task::spawn_blocking(move || sandbox.load(&bytes)).await;
    ctx.loading.fetch_sub(1, Ordering::Relaxed);
    // Compiled, or read from the on-disk cache of compiled modules.
    let took = started.elapsed();
    metrics::histogram!("runner_module_load_seconds").record(took.as_secs_f64());
    // Work, not a wait, for the adaptive slots (`slots.rs`).
    ctx.busy_ns.fetch_add(
        u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    match loaded {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => Err(dead(d, "invalid_module", e.to_string())),
        Err(e) => Err(retry_or_fail(
            d,
            "infrastructure",
            format!("loading the module: {e}"),
        )),
    }
}

async fn run_job(
    ctx: &RunCtx,
    d: &Delivery,
    cancel: CancelToken,
    meter: FuelMeter,
    had_progress: Arc<AtomicBool>,
) -> Settlement {
    let job = &d.job;
    if let Some(refused) = refuse_before_run(ctx, d) {
        return refused;
    }
    let (hash, module) = match resolve(ctx, d).await {
        Ok(m) => m,
        Err(s) => return s,
    };
    let grants = match grants_for(ctx, job.task.as_deref(), &hash).await {
        Ok(g) => g,
        Err(e) => return retry_or_fail(d, "infrastructure", format!("registry: {e}")),
    };
    let children = Arc::new(
        ChildJobs::new(
            ctx.producer.clone(),
            job,
            grants.as_deref().and_then(|g| g.jobs.clone()),
        )
        .with_workflows(Arc::new(ctx.workflows.clone())),
    );

    let (ptx, prx) = progress::slot();
    let run_over = CancelToken::new();
    let forward = progress::forward(
        ctx.broker.clone(),
        d.lease.clone(),
        had_progress,
        run_over.clone(),
        prx,
    );
    let no_grants = TaskGrants::default();
    let mut host = ctx.services.env_for(
        job.task.as_deref().unwrap_or(""),
        grants.as_deref().unwrap_or(&no_grants),
        Some(children.clone() as Arc<dyn JobEnqueuer>),
    );
    host.progress = Some(Arc::new(move |p: &crate::sandbox::Progress| {
        ptx.send_replace(Some(p.clone()));
    }));
    let req = RunRequest {
        input: job.input.clone(),
        limits: run_limits(&ctx.cfg.default_limits, job),
        job: job_info(job),
        host,
        cancel,
        meter,
    };
    let mut report = ctx.sandbox.run(&module, req).await;
    let task = job.task.clone().unwrap_or_default();
    if let Some(fuel) = report.fuel_used {
        metrics::histogram!("runner_job_fuel", "task" => task.clone()).record(fuel as f64);
    }
    metrics::histogram!("runner_job_memory_bytes", "task" => task)
        .record(report.memory_peak_bytes as f64);
    // The run is over (its sink may outlive it inside the sandbox a little):
    // the forwarder stops at once; the last report goes into the record.
    run_over.cancel();
    let _ = forward.await;
    let log = record_log(std::mem::take(&mut report.logs), &report);
    let shutting_down = ctx.shutting_down.load(Ordering::Relaxed);
    let mut settlement = settlement_for(d, report.outcome, shutting_down);
    record_children(&mut settlement, children.children());
    record_last_progress(&mut settlement, report.last_progress);
    record_usage(
        &mut settlement,
        report.fuel_used,
        report.memory_peak_bytes,
        log,
    );
    settlement
}

/// A run's log for its record: its `context.log` lines, a line saying how
/// many were dropped at the run's cap, then what it wrote to stdout (as
/// `INFO` lines) and stderr (`WARN`), each line marked with its stream, at
/// the run's end (when they were written is not known).
fn record_log(lines: Vec<LogLine>, report: &RunReport) -> Vec<LogEntry> {
    let end = report.duration.as_millis() as u64;
    let mut log: Vec<LogEntry> = lines
        .into_iter()
        .map(|l| LogEntry {
            level: l.level.to_string(),
            message: l.message,
            at_ms: l.at.as_millis() as u64,
        })
        .collect();
    if report.logs_dropped > 0 {
        log.push(LogEntry {
            level: "WARN".into(),
            message: format!(
                "[{} more lines past the run's cap on log bytes]",
                report.logs_dropped
            ),
            at_ms: end,
        });
    }
    for (level, stream, text, cut) in [
        ("INFO", "stdout", &report.stdout, report.stdout_truncated),
        ("WARN", "stderr", &report.stderr, report.stderr_truncated),
    ] {
        // Only the last lines can fit in the record: 1 MiB of newlines
        // would otherwise be a million entries here.
        let total = text.lines().count();
        let kept = total.min(MAX_RECORD_LOG_BYTES / LOG_LINE_OVERHEAD);
        if kept < total {
            log.push(LogEntry {
                level: "WARN".into(),
                message: format!("[{} earlier {stream} lines not kept]", total - kept),
                at_ms: end,
            });
        }
        log.extend(text.lines().skip(total - kept).map(|line| LogEntry {
            level: level.into(),
            message: cap_text(format!("[{stream}] {line}"), MAX_MESSAGE_BYTES),
            at_ms: end,
        }));
        if cut {
            log.push(LogEntry {
                level: "WARN".into(),
                message: format!("[{stream} cut at the run's cap on output bytes]"),
                at_ms: end,
            });
        }
    }
    log
}

/// The settlement of a delivery that must not run at all: expired, or
/// redelivered more often than a live worker would need.
fn refuse_before_run(ctx: &RunCtx, d: &Delivery) -> Option<Settlement> {
    // Past its expiry when it was leased, by the broker's clock, it took
    // no rate-limit start there: it must not run, whatever this clock says.
    if d.job.is_expired_at(Utc::now().max(d.leased_at)) {
        let mut expired = finish(
            d,
            JobState::Expired,
            None,
            Some(Job::expiry_failure()),
            false,
        );
        // Leased, but never started: no start time on its record.
        if let Settlement::Finish { job, .. } = &mut expired {
            job.started_at = None;
        }
        return Some(expired);
    }
    if d.lease.redeliveries > ctx.cfg.max_redeliveries {
        return Some(dead(
            d,
            "lost_lease",
            format!(
                "its worker was lost {} times (more than {} redeliveries)",
                d.lease.redeliveries, ctx.cfg.max_redeliveries
            ),
        ));
    }
    None
}

/// The job's limits over the worker's defaults.
pub(super) fn run_limits(defaults: &RunLimits, job: &Job) -> RunLimits {
    let mut limits = defaults.clone();
    if let Some(ms) = job.limits.time_limit_ms {
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = job.limits.soft_time_limit_ms {
        limits.soft_timeout = Some(Duration::from_millis(ms));
    }
    if let Some(f) = job.limits.fuel {
        limits.fuel = Some(f);
    }
    if let Some(m) = job.limits.memory_bytes {
        limits.memory_bytes = m;
    }
    limits
}

/// What the task sees of its job (`context`).
fn job_info(job: &Job) -> JobInfo {
    JobInfo {
        id: job.id.to_string(),
        attempt: job.attempt,
        max_retries: job.retry.max_retries,
        queue: job.queue.clone(),
        task: job.task.clone().unwrap_or_default(),
        schedule: job.schedule.clone(),
        scheduled_for: job.scheduled_for.map(|t| t.to_rfc3339()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobId;

    /// A job's soft time limit reaches its run (the binding's, merged
    /// into the job by the producer, arrives the same way).
    #[test]
    fn the_soft_time_limit_of_a_job_reaches_its_run() {
        let mut job = delivery(0).job;
        assert_eq!(run_limits(&RunLimits::default(), &job).soft_timeout, None);
        job.limits.soft_time_limit_ms = Some(2500);
        job.limits.time_limit_ms = Some(3000);
        let limits = run_limits(&RunLimits::default(), &job);
        assert_eq!(limits.soft_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(limits.timeout, Duration::from_millis(3000));
    }

    fn delivery(max_retries: u32) -> Delivery {
        crate::worker::test_delivery(1, max_retries)
    }

    #[tokio::test]
    async fn a_panic_while_running_is_settled_as_an_infrastructure_failure() {
        let d = delivery(0);
        let c = caught(&d, async { panic!("boom at {}", JobId::new()) }).await;
        assert_eq!(c.lease, d.lease);
        let Settlement::Finish { job, dead } = c.settlement else {
            panic!("not final: {:?}", c.settlement);
        };
        assert!(dead);
        assert_eq!(job.state, JobState::Failure);
        let error = job.error.unwrap();
        assert_eq!(error.kind, "infrastructure");
        assert!(
            error.message.contains("panicked running it: boom at"),
            "{}",
            error.message
        );

        // With retries left it is retried, like any infrastructure failure.
        let d = delivery(2);
        let c = caught(&d, async { panic!("again") }).await;
        assert!(
            matches!(c.settlement, Settlement::Retry { .. }),
            "{:?}",
            c.settlement
        );
    }

    #[tokio::test]
    async fn a_long_panic_message_is_capped_at_a_char_boundary() {
        let d = delivery(0);
        let long = "é".repeat(1000);
        let c = caught(&d, async move { panic!("{long}") }).await;
        let Settlement::Finish { job, .. } = c.settlement else {
            panic!("not final: {:?}", c.settlement);
        };
        let message = job.error.unwrap().message;
        let what = message
            .strip_prefix("the worker panicked running it: ")
            .unwrap();
        assert!(what.len() <= 1024, "{}", what.len());
        assert!(what.starts_with("éé"), "{what}");
        assert!(what.ends_with(" more bytes]"), "{what}");
    }
}
