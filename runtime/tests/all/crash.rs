//! Crashes with real processes: `kill -9` of a `runner worker` mid-run, and
//! a Redis restart (AOF on) mid-run. Nothing may be lost or finished twice.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use runner::producer::{EnqueueRequest, Producer};
use runner::queue::{Broker, JobId, JobState, RedisBroker, RetryPolicy};
use runner::registry::{RedisRegistry, Registry, TaskBinding};

use crate::redis_support::RedisServer;
use crate::support::guest_bytes;

const JOBS: usize = 2000;
const QUEUE: &str = "crash";

struct WorkerProcess(Child);

impl WorkerProcess {
    fn start(url: &str, cache: &std::path::Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args([
                "worker", "-Q", QUEUE, "-c", "8", "--lease", "2s", "--grace", "10s", "--redis", url,
            ])
            .arg("--cache-dir")
            .arg(cache)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting `runner worker`");
        WorkerProcess(child)
    }

    fn kill_9(mut self) {
        // Child::kill is SIGKILL on Unix: no chance to hand anything back.
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on a pid we spawned and still own.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        self.0.wait().unwrap()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn setup(server: &RedisServer, ms: u64) -> (Arc<dyn Broker>, Vec<JobId>) {
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let registry = Arc::new(RedisRegistry::new(b.connection()));
    let hash = registry.put_module(&guest_bytes("sleeper")).await.unwrap();
    let mut binding = TaskBinding::new("sleeper", hash);
    binding.queue = QUEUE.into();
    binding.retry = RetryPolicy::none();
    registry.bind(binding).await.unwrap();
    let broker: Arc<dyn Broker> = Arc::new(b);
    let producer = Producer::new(broker.clone(), registry);
    let input = format!(r#"{{"ms":{ms}}}"#);
    let reqs = (0..JOBS)
        .map(|_| EnqueueRequest::task("sleeper", input.clone()))
        .collect();
    let ids = producer
        .enqueue_batch(reqs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    (broker, ids)
}

/// Jobs not yet final: ready + delayed + in flight.
async fn remaining(broker: &Arc<dyn Broker>) -> Option<u64> {
    let qs = broker.queues().await.ok()?;
    let q = qs.into_iter().find(|q| q.name == QUEUE)?;
    Some(q.ready + q.delayed + q.in_flight)
}

async fn wait_remaining_at_most(broker: &Arc<dyn Broker>, n: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if remaining(broker).await.is_some_and(|r| r <= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {:?} jobs left after {limit:?}",
            remaining(broker).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every job is SUCCESS, its record exists once, nothing is left anywhere.
async fn assert_all_done_once(
    server: &RedisServer,
    broker: &Arc<dyn Broker>,
    ids: &[JobId],
    queue: &str,
) {
    for id in ids {
        let j = broker
            .get(*id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("job {id} lost"));
        assert_eq!(j.state, JobState::Success, "job {id}: {j:?}");
    }
    let q = broker
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == queue)
        .unwrap();
    assert_eq!((q.ready, q.delayed, q.in_flight, q.dead), (0, 0, 0, 0));
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    {
        let mut it = conn
            .scan_match::<_, String>(format!("runner:{{{queue}}}:job:*"))
            .await
            .unwrap();
        while let Some(k) = futures::StreamExt::next(&mut it).await {
            keys.push(k.unwrap());
        }
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), ids.len(), "one final record per job, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_worker_mid_run_second_worker_finishes_everything() {
    let server = RedisServer::start();
    let cache = tempfile::tempdir().unwrap();
    let (broker, ids) = setup(&server, 20).await;
    assert_eq!(remaining(&broker).await, Some(JOBS as u64));

    let first = WorkerProcess::start(&server.url(), cache.path());
    // Mid-run: some done, most still in flight or queued.
    wait_remaining_at_most(&broker, (JOBS - 200) as u64, Duration::from_secs(120)).await;
    let in_flight = broker
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == QUEUE)
        .unwrap()
        .in_flight;
    first.kill_9();
    assert!(
        remaining(&broker).await.unwrap() > 0,
        "killed too late to test anything"
    );

    let second = WorkerProcess::start(&server.url(), cache.path());
    wait_remaining_at_most(&broker, 0, Duration::from_secs(180)).await;
    assert_all_done_once(&server, &broker, &ids, QUEUE).await;
    // The killed worker's leased jobs came back once their lease ran out.
    let redelivered = {
        let mut n = 0;
        for id in &ids {
            if broker.get(*id).await.unwrap().unwrap().redeliveries > 0 {
                n += 1;
            }
        }
        n
    };
    assert!(
        redelivered as u64 <= in_flight + 8,
        "{redelivered} redelivered, {in_flight} were in flight"
    );
    assert!(second.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_mid_run_loses_nothing() {
    let mut server = RedisServer::start_with_aof();
    let cache = tempfile::tempdir().unwrap();
    let (broker, ids) = setup(&server, 10).await;
    let worker = WorkerProcess::start(&server.url(), cache.path());
    wait_remaining_at_most(&broker, (JOBS - 300) as u64, Duration::from_secs(120)).await;
    server.restart();
    // The test's own connection recovers too (ConnectionManager).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if remaining(&broker).await == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not recover: {:?} left",
            remaining(&broker).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_all_done_once(&server, &broker, &ids, QUEUE).await;
    assert!(worker.terminate().success());
}

/// The chaos test: 20,000 jobs, three `runner worker` processes, while the
/// test `kill -9`s a worker (twice), pauses another past its lease
/// (SIGSTOP, SIGCONT), restarts Redis once (AOF) and kills every client
/// connection once. Every job ends with exactly one final record and sits
/// in no queue; each job's task counts its runs in kv, and a job ran more
/// often than it had attempts (a kv call on a killed connection fails
/// `transient` and the task asks for a retry) only if its lease was lost
/// (the record says so: `redeliveries`), that is, only if a worker holding
/// it was killed or paused. At least once, nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_job_ends_once_and_reruns_only_after_a_lost_lease() {
    const CHAOS_JOBS: usize = 20_000;
    const CHAOS_QUEUE: &str = "chaos";
    let mut server = RedisServer::start_with_aof();
    let url = server.url();
    let cache = tempfile::tempdir().unwrap();
    let b = RedisBroker::connect(&url).await.unwrap();
    let registry = Arc::new(RedisRegistry::new(b.connection()));
    let hash = registry.put_module(&guest_bytes("counter")).await.unwrap();
    let mut binding = TaskBinding::new("counter", hash);
    binding.queue = CHAOS_QUEUE.into();
    // A kv call on a connection killed under it fails `transient`, and the
    // task asks for a retry: a retry is a new run, counted as one.
    binding.retry = RetryPolicy {
        max_retries: 10,
        backoff_base_ms: 100,
        backoff_cap_ms: 1000,
        jitter: false,
        retry_on: vec![],
    };
    binding.grants.kv = Some(runner::registry::KvGrant {
        max_keys: Some(100_000),
        max_bytes: None,
    });
    registry.bind(binding).await.unwrap();
    let broker: Arc<dyn Broker> = Arc::new(b);
    let producer = Producer::new(broker.clone(), registry);
    let mut ids = Vec::with_capacity(CHAOS_JOBS);
    for _ in 0..CHAOS_JOBS / 1000 {
        let reqs = (0..1000)
            .map(|_| EnqueueRequest::task("counter", "{}"))
            .collect();
        ids.extend(
            producer
                .enqueue_batch(reqs)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.job.id),
        );
    }
    let left = async || {
        broker
            .queues()
            .await
            .ok()?
            .into_iter()
            .find(|q| q.name == CHAOS_QUEUE)
            .map(|q| q.ready + q.delayed + q.in_flight)
    };
    // kv for the tasks, in the broker's Redis.
    let config = cache.path().join("runner.toml");
    std::fs::write(
        &config,
        format!("[broker]\nredis_url = \"{url}\"\n\n[host.kv]\n"),
    )
    .unwrap();
    let start = |n: usize| {
        let child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args([
                "worker",
                "-Q",
                CHAOS_QUEUE,
                "-c",
                "4",
                "--lease",
                "2s",
                "--grace",
                "5s",
                "--id",
            ])
            .arg(format!("chaos-{n}"))
            .arg("--config")
            .arg(&config)
            .arg("--cache-dir")
            .arg(cache.path())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting `runner worker`");
        WorkerProcess(child)
    };
    let mut workers: Vec<Option<WorkerProcess>> = (0..3).map(|n| Some(start(n))).collect();
    let until_left = async |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(240);
        while left().await.is_none_or(|l| l > n) {
            assert!(
                Instant::now() < deadline,
                "stuck at {:?} jobs left",
                left().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let total = CHAOS_JOBS as u64;
    let stop = |w: &WorkerProcess, sig: i32| {
        // SAFETY: kill(2) on a pid we spawned and still own.
        unsafe {
            libc::kill(w.0.id() as i32, sig);
        }
    };

    until_left(total * 9 / 10).await;
    workers[0].take().unwrap().kill_9();
    workers[0] = Some(start(3));

    until_left(total * 8 / 10).await;
    stop(workers[1].as_ref().unwrap(), libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop(workers[1].as_ref().unwrap(), libc::SIGCONT);

    until_left(total * 6 / 10).await;
    server.restart();

    until_left(total * 4 / 10).await;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .unwrap();

    until_left(total * 2 / 10).await;
    workers[2].take().unwrap().kill_9();
    workers[2] = Some(start(4));

    until_left(0).await;

    // Runs per job, as the tasks counted them.
    let mut runs: std::collections::HashMap<String, u32> = Default::default();
    {
        let mut it = conn.scan_match::<_, String>("*runs:*").await.unwrap();
        while let Some(k) = futures::StreamExt::next(&mut it).await {
            let k = k.unwrap();
            let mut parts = k.rsplit(':');
            let _n = parts.next();
            let id = parts.next().unwrap().to_string();
            *runs.entry(id).or_default() += 1;
        }
    }
    assert_all_done_once(&server, &broker, &ids, CHAOS_QUEUE).await;
    let mut rerun = 0;
    let mut redelivered = 0;
    for id in &ids {
        let j = broker.get(*id).await.unwrap().unwrap();
        let n = runs.get(&id.to_string()).copied().unwrap_or(0);
        assert!(n >= 1, "job {id} succeeded without running: {j:?}");
        if j.redeliveries > 0 {
            redelivered += 1;
        }
        if n > 1 {
            rerun += 1;
            assert!(
                j.redeliveries > 0 || n <= j.attempt,
                "job {id} ran {n} times in {} attempts but its lease was never lost: {j:?}",
                j.attempt
            );
        }
    }
    assert!(
        redelivered > 0,
        "the chaos lost no lease: it tested nothing"
    );
    eprintln!("chaos: {redelivered} jobs redelivered, {rerun} ran more than once");
    for w in workers.into_iter().flatten() {
        w.kill_9();
    }
}

/// A chord of 500: `kill -9` of the worker while it holds the last running
/// member (and, likely, ends it has not applied yet). The member is
/// delivered again to a second worker, and the callback runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_worker_holding_the_last_member_of_a_chord_the_callback_runs_once() {
    use runner::producer::Caller;
    use runner::queue::{JobQuery, WfState};
    use runner::workflow::{WorkflowRequest, Workflows};
    use serde_json::json;

    let server = RedisServer::start();
    let cache = tempfile::tempdir().unwrap();
    let b = RedisBroker::connect(&server.url()).await.unwrap();
    let registry = Arc::new(RedisRegistry::new(b.connection()));
    let hash = registry.put_module(&guest_bytes("sleeper")).await.unwrap();
    for task in ["part", "merge"] {
        let mut binding = TaskBinding::new(task, hash);
        binding.queue = QUEUE.into();
        binding.retry = RetryPolicy::none();
        registry.bind(binding).await.unwrap();
    }
    let broker: Arc<dyn Broker> = Arc::new(b);
    let workflows = Workflows::new(Producer::new(broker.clone(), registry));
    let mut members: Vec<_> = (0..499)
        .map(|_| json!({"task": "part", "input": {"ms": 1}}))
        .collect();
    // Long enough that it is still running once the others have ended,
    // even on a slow machine.
    members.push(json!({"task": "part", "input": {"ms": 8000}}));
    let req: WorkflowRequest = serde_json::from_value(json!({"workflow": {
        "chord": members,
        "callback": {"task": "merge", "input": {"ms": 1}, "previous": "parts"}
    }}))
    .unwrap();
    let wf = workflows.submit(Caller::Admin, &req).await.unwrap();
    assert_eq!(wf.total, 501);

    let first = WorkerProcess::start(&server.url(), cache.path());
    // The slow member is the last one running: every other one has ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    let slow = loop {
        let st = workflows.status(wf.id).await.unwrap().unwrap();
        assert!(
            Instant::now() < deadline && st.done < 500,
            "never caught the slow member running alone: {} done",
            st.done
        );
        let last = &st.tree.steps[499];
        if st.done >= 499
            && let Some(id) = last.job
            && broker.get(id).await.unwrap().unwrap().state == JobState::Started
        {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.kill_9();
    let second = WorkerProcess::start(&server.url(), cache.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    let st = loop {
        let st = workflows.status(wf.id).await.unwrap().unwrap();
        if st.state.is_final() {
            break st;
        }
        assert!(Instant::now() < deadline, "the chord never ended: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st.state, WfState::Succeeded, "{st:?}");
    assert_eq!((st.done, st.total), (501, 501));
    let job = broker.get(slow).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Success);
    assert!(job.redeliveries >= 1, "the slow member ran again: {job:?}");
    // One callback, which got 500 results.
    let merges = broker
        .list(&JobQuery {
            task: Some("merge".into()),
            limit: 10,
            ..JobQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(merges.jobs.len(), 1, "{:?}", merges.jobs);
    let merge = &merges.jobs[0];
    assert_eq!(merge.state, JobState::Success);
    let input: serde_json::Value = serde_json::from_str(&merge.input).unwrap();
    assert_eq!(input["parts"].as_array().map(Vec::len), Some(500));
    assert!(second.terminate().success());
}
