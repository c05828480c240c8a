//! The worker end to end: real example guests, a real sandbox, both brokers.

use std::sync::Arc;
use std::time::Duration;

use runner::producer::{EnqueueRequest, Producer};
use runner::queue::{
    Broker, EmbeddedBroker, JobId, JobState, RedisBroker, RetryPolicy, RevokeOutcome,
};
use runner::registry::{LocalRegistry, RedisRegistry, Registry, TaskBinding};
use runner::sandbox::host::HostServices;
use runner::sandbox::{Sandbox, SandboxConfig};
use runner::worker::{Worker, WorkerConfig, WorkerStats};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::redis_support::{RedisCluster, RedisServer};
use crate::support::guest_bytes;

pub struct Env {
    pub broker: Arc<dyn Broker>,
    pub registry: Arc<dyn Registry>,
    pub producer: Producer,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
}

impl Env {
    pub async fn embedded() -> Env {
        let broker: Arc<dyn Broker> = Arc::new(EmbeddedBroker::new());
        let registry: Arc<dyn Registry> = Arc::new(LocalRegistry::in_memory());
        Env {
            producer: Producer::new(broker.clone(), registry.clone()),
            broker,
            registry,
            redis: None,
            cluster: None,
        }
    }

    /// Redis, as the ACL user of `deploy/redis-users.acl` (the rules must
    /// allow everything a worker and the registry do).
    pub async fn redis() -> Env {
        let server = RedisServer::start_with_acl(&crate::redis_tls::runner_acl("worker-tests"));
        let url = server.url_as("runner", "worker-tests");
        Self::on(&url, Some(server), None).await
    }

    /// A Redis Cluster of three masters, as the ACL user.
    pub async fn cluster() -> Env {
        let acl = crate::redis_tls::runner_acl("worker-tests");
        let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_with_acl(3, 0, &acl))
            .await
            .unwrap();
        let url = cluster.url_as("runner", "worker-tests");
        Self::on(&url, None, Some(cluster)).await
    }

    /// The broker and registry on `url`, keeping the server or cluster.
    async fn on(url: &str, redis: Option<RedisServer>, cluster: Option<RedisCluster>) -> Env {
        // Strict keys: every script must declare every key it touches.
        let b = RedisBroker::connect(url).await.unwrap().with_strict_keys();
        let registry: Arc<dyn Registry> = Arc::new(RedisRegistry::new(b.connection()));
        let broker: Arc<dyn Broker> = Arc::new(b);
        Env {
            producer: Producer::new(broker.clone(), registry.clone()),
            broker,
            registry,
            redis,
            cluster,
        }
    }

    /// Uploads an example and binds `name` to it on `queue`.
    pub async fn bind(
        &self,
        name: &str,
        example: &str,
        queue: &str,
        edit: impl FnOnce(&mut TaskBinding),
    ) {
        self.bind_bytes(name, &guest_bytes(example), queue, edit)
            .await
    }

    /// Uploads the component `bytes` and binds `name` to it on `queue`.
    pub async fn bind_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        queue: &str,
        edit: impl FnOnce(&mut TaskBinding),
    ) {
        let hash = self.registry.put_module(bytes).await.unwrap();
        let mut b = TaskBinding::new(name, hash);
        b.queue = queue.into();
        b.retry = RetryPolicy {
            max_retries: 3,
            backoff_base_ms: 50,
            backoff_cap_ms: 200,
            jitter: true,
            retry_on: vec![],
        };
        edit(&mut b);
        self.registry.bind(b).await.unwrap();
    }

    /// Enqueues a job of `task` with `input`; its id.
    pub async fn enqueue(&self, task: &str, input: &str) -> JobId {
        self.producer
            .enqueue(EnqueueRequest::task(task, input))
            .await
            .unwrap()
            .job
            .id
    }

    /// A worker with its own broker connection when on Redis.
    pub async fn worker(&self, cfg: WorkerConfig) -> RunningWorker {
        self.worker_with(HostServices::default(), cfg).await
    }

    /// [`Env::worker`] whose runs reach `services` as far as their grants
    /// allow.
    pub async fn worker_with(&self, services: HostServices, cfg: WorkerConfig) -> RunningWorker {
        self.worker_in(test_sandbox(None), services, cfg).await
    }

    /// [`Env::worker_with`] running its jobs in `sandbox`.
    pub async fn worker_in(
        &self,
        sandbox: Sandbox,
        services: HostServices,
        cfg: WorkerConfig,
    ) -> RunningWorker {
        let url = match (&self.redis, &self.cluster) {
            (Some(server), _) => Some(server.url()),
            (None, Some(cluster)) => Some(cluster.url()),
            (None, None) => None,
        };
        let broker: Arc<dyn Broker> = match url {
            Some(url) => Arc::new(RedisBroker::connect(&url).await.unwrap().with_strict_keys()),
            None => self.broker.clone(),
        };
        start_worker_in(broker, self.registry.clone(), sandbox, services, cfg)
    }
}

pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<WorkerStats>,
}

impl RunningWorker {
    pub async fn stop(mut self) -> WorkerStats {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the worker stops within its grace period")
            .unwrap()
    }
}

/// A sandbox for a test's worker, keeping compiled modules in `cache_dir`
/// when given.
pub fn test_sandbox(cache_dir: Option<std::path::PathBuf>) -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir,
        max_concurrent_runs: 16,
        ..SandboxConfig::default()
    })
    .unwrap()
}

pub fn start_worker_with(
    broker: Arc<dyn Broker>,
    registry: Arc<dyn Registry>,
    services: HostServices,
    cfg: WorkerConfig,
) -> RunningWorker {
    start_worker_in(broker, registry, test_sandbox(None), services, cfg)
}

pub fn start_worker_in(
    broker: Arc<dyn Broker>,
    registry: Arc<dyn Registry>,
    sandbox: Sandbox,
    services: HostServices,
    cfg: WorkerConfig,
) -> RunningWorker {
    let (tx, rx) = oneshot::channel::<()>();
    let worker = Worker::new(broker, registry, sandbox, services, cfg);
    let handle = tokio::spawn(async move {
        worker
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap()
    });
    RunningWorker {
        stop: Some(tx),
        handle,
    }
}

pub fn cfg(queues: &[&str], concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        concurrency,
        lease: Duration::from_secs(5),
        grace: Duration::from_secs(10),
        ..WorkerConfig::default()
    }
}

/// Waits (10 s at most) for job `id` to start, as `events` tell.
pub async fn wait_started(
    events: &mut tokio::sync::broadcast::Receiver<runner::queue::JobEvent>,
    id: JobId,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.id == id && ev.state == JobState::Started {
                break;
            }
        }
    })
    .await
    .expect("the job starts");
}

pub async fn wait_final(b: &Arc<dyn Broker>, id: JobId) -> runner::queue::Job {
    let j = b.wait(id, Duration::from_secs(30)).await.unwrap().unwrap();
    assert!(
        j.state.is_final(),
        "job {id} still {:?} after 30 s",
        j.state
    );
    j
}

async fn hello_runs_to_success(env: Env) {
    env.bind("hello", "hello", "mail", |_| {}).await;
    let w = env.worker(cfg(&["mail"], 2)).await;
    let id = env.enqueue("hello", r#"{"name":"Ada"}"#).await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    let out = j.result_value().unwrap();
    assert_eq!(out["greeting"], "Hello, Ada!");
    assert_eq!(out["attempt"], 1);
    assert!(j.started_at.is_some() && j.finished_at.is_some());
    // The task's last progress report is kept on the final record.
    assert_eq!(j.progress.as_ref().map(|p| (p.done, p.total)), Some((1, 1)));

    // A task `fail` is final and lands in the dead letters.
    let id = env.enqueue("hello", r#"{"name":"  "}"#).await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Failure);
    assert_eq!(j.attempt, 1, "fail is not retried");
    // On Redis the idle worker was pushed this job (and runs it at once;
    // ignored, it would come back when the lease runs out).
    assert_eq!(j.redeliveries, 0);
    assert_eq!(j.error.as_ref().unwrap().kind, "fail");
    assert_eq!(env.broker.dead_letters("mail", 10).await.unwrap().len(), 1);
    // The queue's history counted both; this minute shows the depth now
    // (as the API does): nothing waits or runs.
    let depth = env
        .broker
        .queues()
        .await
        .unwrap()
        .iter()
        .find(|q| q.name == "mail")
        .map(|q| q.depth());
    let hour = env.broker.history(&["mail".to_string()]).await.unwrap()[0]
        .points(chrono::Utc::now(), depth);
    let sum = |f: fn(&runner::queue::history::HistoryPoint) -> u64| hour.iter().map(f).sum::<u64>();
    assert_eq!(
        (sum(|p| p.enqueued), sum(|p| p.succeeded), sum(|p| p.failed)),
        (2, 1, 1)
    );
    let now = hour.last().unwrap();
    assert_eq!((now.waiting, now.running), (Some(0), Some(0)), "{now:?}");
    let stats = w.stop().await;
    assert_eq!((stats.succeeded, stats.failed), (1, 1));
}

async fn retries_with_backoff_then_success_or_dead_letter(env: Env) {
    env.bind("flaky", "flaky", "default", |_| {}).await;
    env.bind("flaky-once", "flaky", "default", |b| {
        b.retry.max_retries = 1
    })
    .await;
    let w = env.worker(cfg(&["default"], 2)).await;
    let ok = env.enqueue("flaky", r#"{"succeed_on_attempt":3}"#).await;
    let gives_up = env
        .enqueue("flaky-once", r#"{"succeed_on_attempt":3}"#)
        .await;
    let j = wait_final(&env.broker, ok).await;
    assert_eq!(j.state, JobState::Success);
    assert_eq!(j.result_value().unwrap()["attempt"], 3);
    assert_eq!(j.attempt, 3);
    let j = wait_final(&env.broker, gives_up).await;
    assert_eq!(j.state, JobState::Failure);
    assert_eq!(j.attempt, 2);
    let e = j.error.unwrap();
    assert_eq!(e.kind, "retry");
    assert!(
        e.message.contains("gave up after 1 retries"),
        "{}",
        e.message
    );
    let dead = env.broker.dead_letters("default", 10).await.unwrap();
    assert_eq!(
        dead.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![gives_up]
    );
    w.stop().await;
}

/// A retry policy whose backoff ends past any date (10^16 ms) once panicked
/// the job's task: the job stayed STARTED, its lease extended forever. It
/// ends as a final failure, and the worker goes on with the next job.
async fn a_backoff_past_any_date_ends_the_job_and_frees_its_slot(env: Env) {
    env.bind("far", "flaky", "default", |b| {
        b.retry.max_retries = 3;
        b.retry.backoff_base_ms = 10_u64.pow(16);
        b.retry.backoff_cap_ms = u64::MAX;
    })
    .await;
    env.bind("hello", "hello", "default", |_| {}).await;
    let w = env.worker(cfg(&["default"], 1)).await;
    let far = env.enqueue("far", r#"{"succeed_on_attempt":2}"#).await;
    let j = wait_final(&env.broker, far).await;
    assert_eq!(j.state, JobState::Failure, "{j:?}");
    assert!(
        j.error.as_ref().unwrap().message.contains("past any date"),
        "{j:?}"
    );
    let next = env.enqueue("hello", r#"{"name":"next"}"#).await;
    assert_eq!(wait_final(&env.broker, next).await.state, JobState::Success);
    w.stop().await;
}

async fn revoke_terminates_a_running_job(env: Env) {
    env.bind("sleeper", "sleeper", "default", |b| {
        b.limits.time_limit_ms = Some(60_000)
    })
    .await;
    let w = env.worker(cfg(&["default"], 2)).await;
    let mut events = env.broker.subscribe().await.unwrap();
    let id = env.enqueue("sleeper", r#"{"ms":20000}"#).await;
    wait_started(&mut events, id).await;
    let t = std::time::Instant::now();
    assert_eq!(
        env.broker.revoke(id, true).await.unwrap(),
        runner::queue::RevokeOutcome::Terminating
    );
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Revoked);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "stopped long before its 20 s sleep"
    );
    // A queued job that is revoked never runs.
    let mut req = EnqueueRequest::task("sleeper", r#"{"ms":1}"#);
    req.countdown_secs = Some(0.3);
    let later = env.producer.enqueue(req).await.unwrap().job.id;
    env.broker.revoke(later, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        env.broker.get(later).await.unwrap().unwrap().state,
        JobState::Revoked
    );
    w.stop().await;
}

async fn long_job_outlives_its_lease_and_runs_once(env: Env) {
    env.bind("sleeper", "sleeper", "default", |_| {}).await;
    let lease = Duration::from_millis(600);
    let mut c = cfg(&["default"], 2);
    c.lease = lease;
    let a = env.worker(c.clone()).await;
    let b = env.worker(c).await;
    let mut events = env.broker.subscribe().await.unwrap();
    // Three times the lease.
    let id = env.enqueue("sleeper", r#"{"ms":1800}"#).await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Success);
    assert_eq!(j.redeliveries, 0);
    let mut starts = 0;
    while let Ok(ev) = events.try_recv() {
        if ev.id == id && ev.state == JobState::Started && ev.progress.is_none() {
            starts += 1;
        }
    }
    assert_eq!(starts, 1, "executed exactly once");
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.processed + sb.processed, 1);
}

async fn graceful_shutdown_finishes_running_jobs(env: Env) {
    env.bind("sleeper", "sleeper", "default", |_| {}).await;
    let w = env.worker(cfg(&["default"], 4)).await;
    let mut events = env.broker.subscribe().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let e = env
            .producer
            .enqueue(EnqueueRequest::task("sleeper", r#"{"ms":700}"#))
            .await
            .unwrap();
        ids.push(e.job.id);
    }
    let mut started = 0;
    while started < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.state == JobState::Started && ev.progress.is_none() {
            started += 1;
        }
    }
    let stats = w.stop().await;
    assert_eq!(stats.succeeded, 4);
    for id in ids {
        assert_eq!(
            env.broker.get(id).await.unwrap().unwrap().state,
            JobState::Success
        );
    }
    assert!(
        env.broker.workers().await.unwrap().is_empty(),
        "a stopped worker is not listed"
    );
}

/// Enqueues `reqs` in one batch; their ids, in order.
async fn batch(env: &Env, reqs: Vec<EnqueueRequest>) -> Vec<JobId> {
    env.producer
        .enqueue_batch(reqs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect()
}

/// The adaptive prefetch (the default) grows past its start for fast jobs
/// and never holds more than the slots plus its documented cap, however
/// many jobs wait.
async fn adaptive_prefetch_holds_no_more_than_its_cap(env: Env) {
    env.bind("hello", "hello", "many", |_| {}).await;
    let ids = batch(
        &env,
        (0..3000)
            .map(|i| EnqueueRequest::task("hello", format!(r#"{{"name":"n{i}"}}"#)))
            .collect(),
    )
    .await;
    let w = env.worker(cfg(&["many"], 2)).await;
    let most_held = 2 + runner::worker::prefetch::cap(2) as u64;
    let mut most = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = env.broker.queues().await.unwrap();
        let q = stats.iter().find(|q| q.name == "many").unwrap();
        most = most.max(q.in_flight);
        assert!(
            q.in_flight <= most_held,
            "{} leased at once: more than 2 slots + the cap",
            q.in_flight
        );
        if q.ready == 0 && q.in_flight == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not drained: {q:?}");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        wait_final(&env.broker, *ids.last().unwrap()).await.state,
        JobState::Success
    );
    // Runs of microseconds: the worker leases ahead more than the
    // concurrency it starts with, within the cap.
    let held = env.broker.inspect(Duration::from_secs(5)).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].prefetch > 2 && held[0].prefetch <= runner::worker::prefetch::cap(2),
        "prefetch {} (most leased at once: {most})",
        held[0].prefetch
    );
    let stats = w.stop().await;
    assert_eq!(stats.succeeded, 3000);
}

/// Jobs leased ahead behind slow jobs are handed back when every slot
/// stays busy, and another worker runs them: a slow job holds no other job
/// hostage (no head-of-line blocking across workers). One revoked while it
/// waited is not handed back (another worker would run it): it ends
/// REVOKED.
async fn a_slow_jobs_neighbours_go_to_another_worker(env: Env) {
    env.bind("sleep", "sleeper", "mixed", |_| {}).await;
    env.bind("hello", "hello", "mixed", |_| {}).await;
    let mut events = env.broker.subscribe().await.unwrap();
    let holder = env
        .worker(WorkerConfig {
            id: Some("holder".into()),
            ..cfg(&["mixed"], 2)
        })
        .await;
    // One batch: two slow jobs, then four quick ones. The holder leases the
    // slow ones and, before any run ended, two more ahead (its prefetch
    // starts at its concurrency); the last two wait in the queue.
    let slow = r#"{"ms":60000}"#;
    let mut reqs = vec![
        EnqueueRequest::task("sleep", slow),
        EnqueueRequest::task("sleep", slow),
    ];
    reqs.extend((0..4).map(|i| EnqueueRequest::task("hello", format!(r#"{{"name":"q{i}"}}"#))));
    let ids = batch(&env, reqs).await;
    // All four are the holder's (on Redis the slow ones may be pushed to
    // it at enqueue, and the two ahead leased by its next call).
    for id in &ids[..4] {
        wait_started(&mut events, *id).await;
    }
    // The first job leased ahead is revoked while it waits.
    assert_eq!(
        env.broker.revoke(ids[2], false).await.unwrap(),
        RevokeOutcome::WillNotRetry
    );
    let helper = env
        .worker(WorkerConfig {
            id: Some("helper".into()),
            ..cfg(&["mixed"], 1)
        })
        .await;
    for id in &ids[3..] {
        let j = wait_final(&env.broker, *id).await;
        assert_eq!(j.state, JobState::Success, "{j:?}");
        assert_eq!(j.worker.as_deref(), Some("helper"), "{j:?}");
    }
    let revoked = wait_final(&env.broker, ids[2]).await;
    assert_eq!(revoked.state, JobState::Revoked, "{revoked:?}");
    for id in &ids[..2] {
        let j = env.broker.get(*id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Started, "the slow jobs still run");
        assert_eq!(j.worker.as_deref(), Some("holder"));
        env.broker.revoke(*id, true).await.unwrap();
        assert_eq!(wait_final(&env.broker, *id).await.state, JobState::Revoked);
    }
    let held = holder.stop().await;
    assert_eq!(held.handed_back, 1, "{held:?}");
    helper.stop().await;
}

macro_rules! both_brokers {
    ($($name:ident),* $(,)?) => {
        mod embedded_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::embedded().await).await;
                }
            )*
        }
        mod redis_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::redis().await).await;
                }
            )*
        }
    };
}

pub(crate) use both_brokers;

/// The worker's cases on both brokers and on a Redis Cluster of three
/// masters as well.
macro_rules! on_every_broker {
    ($($name:ident),* $(,)?) => {
        both_brokers!($($name),*);
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::cluster().await).await;
                }
            )*
        }
    };
}

on_every_broker!(
    hello_runs_to_success,
    retries_with_backoff_then_success_or_dead_letter,
    a_backoff_past_any_date_ends_the_job_and_frees_its_slot,
    revoke_terminates_a_running_job,
    long_job_outlives_its_lease_and_runs_once,
    graceful_shutdown_finishes_running_jobs,
    adaptive_prefetch_holds_no_more_than_its_cap,
    a_slow_jobs_neighbours_go_to_another_worker,
    a_stopped_worker_is_pushed_nothing,
    slots_grow_for_runs_that_wait_and_not_for_busy_ones,
    runs_started_together_compile_their_module_once,
    a_partition_the_config_does_not_name_is_drained,
);

/// A partition that holds jobs but that the worker's config does not name
/// (its queue's count was lowered from 8 to 2, or this process's config
/// lacks it) is consumed too: its jobs are not stranded. An empty one is
/// left alone.
async fn a_partition_the_config_does_not_name_is_drained(env: Env) {
    env.bind("hello", "hello", "hot", |_| {}).await;
    let mut left = runner::queue::Job::new("hot~5", r#"{"name":"Ada"}"#, chrono::Utc::now());
    left.task = Some("hello".into());
    let id = left.id;
    let mut empty = runner::queue::Job::new("hot~6", "{}", chrono::Utc::now());
    empty.task = Some("hello".into());
    env.broker.enqueue(vec![left, empty]).await.unwrap();
    // Another worker ran the job of `hot~6`: that partition is empty.
    use crate::queue_conformance::{settle, success};
    let d = env
        .broker
        .settle(settle("hot~6", "someone", vec![], 1))
        .await
        .unwrap();
    assert_eq!(d.deliveries.len(), 1);
    env.broker
        .settle(settle(
            "hot~6",
            "someone",
            vec![success(&d.deliveries[0], "1")],
            0,
        ))
        .await
        .unwrap();
    // The config names `hot` alone (partitions = 1).
    let w = env.worker(cfg(&["hot", "other"], 2)).await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    let queues: Vec<String> = env
        .broker
        .workers()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|w| w.queues)
        .collect();
    assert!(queues.contains(&"hot~5".to_string()), "{queues:?}");
    assert!(!queues.contains(&"hot~6".to_string()), "{queues:?}");
    w.stop().await;
}

/// Runs that need a module this worker has not loaded yet, started
/// together, load it once: the others wait for that load instead of
/// compiling the module again (a Python component takes seconds).
async fn runs_started_together_compile_their_module_once(env: Env) {
    env.bind("sleep", "sleeper", "default", |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(enqueue(&env, "sleep", r#"{"ms":1}"#).await);
    }
    let sandbox = test_sandbox(None);
    let w = env
        .worker_in(
            sandbox.clone(),
            HostServices::default(),
            cfg(&["default"], 4),
        )
        .await;
    for id in &ids {
        let j = wait_final(&env.broker, *id).await;
        assert_eq!(j.state, JobState::Success, "{j:?}");
    }
    assert_eq!(sandbox.compilations(), 1);
    let stats = w.stop().await;
    assert_eq!(stats.succeeded, 4, "{stats:?}");
}

/// An idle worker registers for pushes what a lease call of its would take
/// (its free slot and the jobs its prefetch holds ahead), so that a batch
/// enqueued for it is pushed whole: it needs no lease call of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_registers_its_prefetch_for_pushes() {
    let env = Env::redis().await;
    env.bind("hello", "hello", "default", |_| {}).await;
    let w = env
        .worker(WorkerConfig {
            id: Some("reg".into()),
            prefetch: runner::worker::Prefetch::Fixed(3),
            ..cfg(&["default"], 1)
        })
        .await;
    let first = enqueue(&env, "hello", r#"{"name":"Ada"}"#).await;
    assert_eq!(
        wait_final(&env.broker, first).await.state,
        JobState::Success
    );
    let url = env.redis.as_ref().unwrap().url_as("runner", "worker-tests");
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    // Its call after the run found the queue empty: it registers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reg = loop {
        let reg: Option<String> = redis::cmd("HGET")
            .arg("runner:{default}:idle")
            .arg("reg")
            .query(&mut c)
            .unwrap();
        if let Some(r) = reg.filter(|r| !r.starts_with("p|")) {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the worker registers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(reg.starts_with("4|"), "one slot and three ahead: {reg}");
    let ids: Vec<JobId> = env
        .producer
        .enqueue_batch(
            (0..4)
                .map(|i| EnqueueRequest::task("hello", format!(r#"{{"name":"n{i}"}}"#)))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    // All four were leased to it by the enqueue itself: none waits.
    let waiting: i64 = redis::cmd("LLEN")
        .arg("runner:{default}:ready")
        .query(&mut c)
        .unwrap();
    assert_eq!(waiting, 0);
    for id in ids {
        let j = wait_final(&env.broker, id).await;
        assert_eq!(
            (j.state, j.worker.as_deref()),
            (JobState::Success, Some("reg"))
        );
    }
    w.stop().await;
}

/// A worker of two queues with one slot and no prefetch can take one job:
/// its registrations for pushes offer one in all, not one per queue. So
/// once a push on one queue fills its slot, a job enqueued on the other
/// waits in the queue for a free worker. Before, both queues kept a
/// registration, and the second job was pushed to the busy worker, where
/// it waited for the first to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_two_queues_is_pushed_no_more_than_it_can_take() {
    let env = Env::redis().await;
    env.bind("sleep", "sleeper", "b", |_| {}).await;
    env.bind("hello", "hello", "a", |_| {}).await;
    let url = env.redis.as_ref().unwrap().url_as("runner", "worker-tests");
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let offers = |c: &mut redis::Connection| -> Vec<String> {
        ["a", "b"]
            .iter()
            .filter_map(|q| {
                redis::cmd("HGET")
                    .arg(format!("runner:{{{q}}}:idle"))
                    .arg("two")
                    .query::<Option<String>>(c)
                    .unwrap()
                    .filter(|r| !r.starts_with("p|"))
            })
            .collect()
    };
    let w = env
        .worker(WorkerConfig {
            id: Some("two".into()),
            prefetch: runner::worker::Prefetch::Fixed(0),
            ..cfg(&["a", "b"], 1)
        })
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while offers(&mut c).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the worker registers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its first calls are over: one registration of one job.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = offers(&mut c);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(now[0].starts_with("1|"), "{now:?}");

    let mut events = env.broker.subscribe().await.unwrap();
    let slow = enqueue(&env, "sleep", r#"{"ms": 3000}"#).await;
    wait_started(&mut events, slow).await;
    let next = enqueue(&env, "hello", r#"{"name":"Ada"}"#).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let j = env.broker.get(next).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.worker.as_deref()),
        (JobState::Pending, None),
        "not pushed to the busy worker"
    );
    for id in [slow, next] {
        assert_eq!(wait_final(&env.broker, id).await.state, JobState::Success);
    }
    w.stop().await;
}

/// A worker's process keeps the modules its jobs used last (`[worker]
/// module_cache`, here 2), with those it loaded at start-up: the first job
/// of a task bound at start-up compiles nothing, and a version used longest
/// ago is compiled again when a job needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_the_modules_its_jobs_used_last() {
    let env = Env::embedded().await;
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_runs: 16,
        loaded_modules_max: 2,
        ..SandboxConfig::default()
    })
    .unwrap();
    let hello = guest_bytes("hello");
    // At start-up, `[tasks]` bindings are uploaded (and compiled) first.
    runner::deploy::upload(&sandbox, &env.registry, hello.clone())
        .await
        .unwrap();
    assert_eq!(sandbox.compilations(), 1);
    env.bind_bytes("v0", &hello, "default", |_| {}).await;
    for i in 1..3 {
        let version = crate::support::with_custom_section(&hello, &format!("v{i}"));
        env.bind_bytes(&format!("v{i}"), &version, "default", |_| {})
            .await;
    }
    let w = env
        .worker_in(
            sandbox.clone(),
            HostServices::default(),
            cfg(&["default"], 1),
        )
        .await;
    let mut compiled = Vec::new();
    for task in ["v0", "v1", "v2", "v0", "v2"] {
        let id = enqueue(&env, task, r#"{"name":"Ada"}"#).await;
        let j = wait_final(&env.broker, id).await;
        assert_eq!(j.state, JobState::Success, "{j:?}");
        compiled.push(sandbox.compilations());
    }
    // v0 was loaded at start-up; v1 and v2 by their first jobs, which let
    // go of v0 (the oldest); v0 then pushes v1 out, and v2 is still kept.
    assert_eq!(compiled, [1, 2, 3, 4, 4]);
    assert_eq!(sandbox.modules_held(), 2);
    let stats = w.stop().await;
    assert_eq!(stats.succeeded, 5, "{stats:?}");
}

/// Job `id`'s state now.
async fn state(env: &Env, id: JobId) -> JobState {
    env.broker.get(id).await.unwrap().unwrap().state
}

/// Enqueues one job of `task`; its id.
pub async fn enqueue(env: &Env, task: &str, input: &str) -> JobId {
    env.enqueue(task, input).await
}

/// The slots a worker runs, as inspect shows them, until `done` (at most
/// 60 s); checks that no more runs than slots are active. The most seen.
async fn most_slots(env: &Env, done: &[JobId]) -> usize {
    let mut most = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let held = env.broker.inspect(Duration::from_secs(5)).await.unwrap();
        if let Some(w) = held.first() {
            assert!(
                w.active.len() <= w.concurrency,
                "{} active in {} slots",
                w.active.len(),
                w.concurrency
            );
            most = most.max(w.concurrency);
        }
        let mut ended = 0;
        for id in done {
            if state(env, *id).await.is_final() {
                ended += 1;
            }
        }
        if ended == done.len() {
            return most;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ended} of {} ended",
            done.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Without a fixed concurrency the slots adapt (`worker/slots.rs`): runs
/// that wait (a sleep here, as a mail or a webhook call would) grow the
/// worker past its base while jobs wait, never past its maximum; CPU-bound
/// runs keep the base.
async fn slots_grow_for_runs_that_wait_and_not_for_busy_ones(env: Env) {
    env.bind("burn", "fuel_burner", "slots", |b| {
        b.limits.time_limit_ms = Some(250);
        b.retry = RetryPolicy::none();
    })
    .await;
    env.bind("sleep", "sleeper", "slots", |_| {}).await;
    let mut c = cfg(&["slots"], 1);
    c.max_concurrency = Some(6);
    let w = env.worker(c).await;
    // Two seconds of runs that burn CPU until their time limit.
    let burns = batch(
        &env,
        (0..8).map(|_| EnqueueRequest::task("burn", "{}")).collect(),
    )
    .await;
    assert_eq!(
        most_slots(&env, &burns).await,
        1,
        "CPU-bound runs grew the slots"
    );
    let sleeps = batch(
        &env,
        (0..40)
            .map(|_| EnqueueRequest::task("sleep", r#"{"ms":300}"#))
            .collect(),
    )
    .await;
    let most = most_slots(&env, &sleeps).await;
    assert!(most > 1 && most <= 6, "slots went up to {most}");
    for id in sleeps {
        assert_eq!(state(&env, id).await, JobState::Success);
    }
    w.stop().await;
}

/// A worker that stops while idle (registered for pushes on Redis) ends its
/// registration: the next job waits for a live worker instead of being
/// leased to a stopped one.
async fn a_stopped_worker_is_pushed_nothing(env: Env) {
    env.bind("hello", "hello", "default", |_| {}).await;
    let w = env.worker(cfg(&["default"], 2)).await;
    let first = enqueue(&env, "hello", r#"{"name":"Ada"}"#).await;
    assert_eq!(
        wait_final(&env.broker, first).await.state,
        JobState::Success
    );
    // Its call after the run found the queue empty: it is idle.
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.stop().await;
    let next = enqueue(&env, "hello", r#"{"name":"Bo"}"#).await;
    assert_eq!(state(&env, next).await, JobState::Pending);
    let w = env.worker(cfg(&["default"], 2)).await;
    let j = wait_final(&env.broker, next).await;
    assert_eq!((j.state, j.redeliveries), (JobState::Success, 0));
    w.stop().await;
}
