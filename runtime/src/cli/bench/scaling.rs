//! `runner bench queue --workers 1,2,4`: the same jobs drained by N worker
//! processes (`runner worker`, this binary, default settings) on one Redis,
//! for each N given: jobs/s from the first enqueue to the last result (the
//! producer enqueues while the workers drain), and the CPU Redis used
//! (`INFO cpu`), as cores per 10,000 jobs/s, so that an operator can size a
//! deployment.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::producer::Producer;
use crate::queue::Broker;

/// Worker processes of one step, killed on drop.
pub(super) struct Workers(Vec<Child>);

impl Workers {
    /// `runner worker` processes of this binary on `url`, one per id of
    /// `ids`, serving `queues` (comma-separated) with default settings and
    /// compiled modules in `cache_dir`; returned once each has sent its
    /// first heartbeat (60 s at most).
    pub(super) async fn start(
        url: &str,
        queues: &str,
        ids: &[String],
        cache_dir: &std::path::Path,
        broker: &Arc<dyn Broker>,
    ) -> anyhow::Result<Workers> {
        let exe = std::env::current_exe().context("this binary's path")?;
        let workers = Workers(
            ids.iter()
                .map(|id| {
                    Command::new(&exe)
                        .args(["worker", "--redis", url, "-Q", queues, "--id", id])
                        .arg("--cache-dir")
                        .arg(cache_dir)
                        .env("RUST_LOG", "error")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("starting a `runner worker` process")
                })
                .collect::<anyhow::Result<_>>()?,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = broker.workers().await?;
            if ids.iter().all(|id| up.iter().any(|w| &w.id == id)) {
                return Ok(workers);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} worker processes did not all start within 60 s",
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The figures of one step.
pub struct Step {
    pub workers: usize,
    pub jobs_per_sec: f64,
    /// Cores of Redis CPU (user + system) while draining.
    pub redis_cores: f64,
}

impl Step {
    /// Redis cores per 10,000 jobs/s.
    pub fn redis_per_10k(&self) -> f64 {
        self.redis_cores / (self.jobs_per_sec / 10_000.0)
    }
}

pub fn print(steps: &[&Step], jobs: usize) {
    println!(
        "scaling ({jobs} jobs per step, enqueued while the workers drain; each worker with default settings)"
    );
    let base = steps.first().map_or(1.0, |s| s.jobs_per_sec);
    for s in steps {
        let who = format!(
            "{} worker process{}:",
            s.workers,
            if s.workers == 1 { "" } else { "es" }
        );
        println!(
            "  {who:<20}{:>10.0} jobs/s  (x{:.2})  redis cpu {:.2} cores, {:.2} cores per 10k jobs/s",
            s.jobs_per_sec,
            s.jobs_per_sec / base,
            s.redis_cores,
            s.redis_per_10k()
        );
    }
}

/// Redis's CPU seconds so far (user + system, its main thread and others).
async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| runner_test_support::info_field::<f64>(&info, name);
    Ok(field("used_cpu_user").context("no used_cpu_user in INFO")?
        + field("used_cpu_sys").context("no used_cpu_sys in INFO")?)
}

/// One step: `n` worker processes on `url` drain `jobs` jobs of `task`.
#[allow(clippy::too_many_arguments)]
pub async fn step(
    n: usize,
    url: &str,
    queue: &str,
    task: &str,
    input: &str,
    jobs: usize,
    batch: usize,
    producer: &Producer,
    broker: &Arc<dyn Broker>,
    cache_dir: &std::path::Path,
) -> anyhow::Result<Step> {
    let ids: Vec<String> = (0..n).map(|i| format!("bench-{n}x-{i}")).collect();
    // Every worker is up (its first heartbeat), then warmed up: each has
    // loaded the module and leased once before the clock starts.
    let workers = Workers::start(url, queue, &ids, cache_dir, broker).await?;
    let mut events = broker.subscribe().await?;
    let warm = 100 * n;
    super::enqueue_jobs(producer, task, input, warm, warm, None).await?;
    super::wait_finals(&mut events, &[queue], warm, None).await?;

    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let cpu0 = redis_cpu(&mut conn).await?;
    let t0 = Instant::now();
    let enqueue = {
        let producer = producer.clone();
        let (task, input) = (task.to_string(), input.to_string());
        tokio::spawn(async move {
            super::enqueue_jobs(&producer, &task, &input, jobs, batch, None).await
        })
    };
    super::wait_finals(&mut events, &[queue], jobs, None).await?;
    let took = t0.elapsed();
    enqueue.await??;
    let cpu = redis_cpu(&mut conn).await? - cpu0;
    drop(workers);
    Ok(Step {
        workers: n,
        jobs_per_sec: jobs as f64 / took.as_secs_f64(),
        redis_cores: cpu / took.as_secs_f64(),
    })
}

/// Celery's figure for the same jobs (`celery_bench.py`): one Celery worker,
/// prefork, `concurrency` processes, on a Redis of its own, enqueued while
/// it drains. `None` when Celery (with its Redis client) is not installed.
pub struct CeleryRun {
    pub version: String,
    pub jobs_per_sec: f64,
    pub seconds: f64,
    pub enqueue_seconds: f64,
}

/// Celery's version, if `python3` can import `celery` and `redis`.
pub fn celery_version() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import celery, redis; print(celery.__version__)"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs Celery's side on a Redis of its own.
pub async fn celery(
    redis_server: &str,
    jobs: usize,
    concurrency: usize,
    version: String,
) -> anyhow::Result<CeleryRun> {
    let redis = super::RedisChild::start(redis_server)?;
    let dir = std::env::temp_dir().join(format!("runner-bench-celery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("celery_bench.py");
    std::fs::write(&script, include_str!("celery_bench.py"))?;
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(redis.url())
        .arg(jobs.to_string())
        .arg(concurrency.to_string())
        .arg(&dir)
        .stderr(Stdio::piped())
        .output()
        .await
        .context("running python3")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "Celery's run failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("Celery's figures: {}", String::from_utf8_lossy(&out.stdout)))?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
    Ok(CeleryRun {
        version,
        jobs_per_sec: num("jobs_per_sec")?,
        seconds: num("seconds")?,
        enqueue_seconds: num("enqueue_seconds")?,
    })
}

pub fn print_celery(celery: &CeleryRun, ours: &Step, jobs: usize) {
    println!(
        "celery {} (one worker, prefork, concurrency 2, a Redis of its own; the same {jobs} jobs enqueued while it drains)",
        celery.version
    );
    println!(
        "  celery:             {:>10.0} jobs/s ({:.1} s; its enqueue alone {:.1} s)",
        celery.jobs_per_sec, celery.seconds, celery.enqueue_seconds
    );
    println!(
        "  runner:             {:>10.0} jobs/s (one `runner worker` process, the same way)",
        ours.jobs_per_sec
    );
    println!(
        "  ratio:              {:>10.1}x",
        ours.jobs_per_sec / celery.jobs_per_sec
    );
}
