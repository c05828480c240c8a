//! Dead connections are noticed: pub/sub connections are PINGed and
//! replaced when they stop answering (a silent drop: here a proxy that
//! stops forwarding without closing anything), event feeds resubscribe
//! after a killed connection instead of ending, and a worker that never
//! hears a revoke learns it from its lease extension.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use runner::queue::redis::Liveness;
use runner::queue::{
    Broker, BrokerError, BrokerResult, Enqueued, Extended, Job, JobEvent, JobId, JobState, Lease,
    Progress, PurgeFilter, QueueStats, RedisBroker, RevokeOutcome, SettleReply, SettleRequest,
    Signal, WorkerInfo,
};
use runner::worker::WorkerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

use crate::queue_conformance::{settle, success};
use crate::redis_support::RedisServer;
use crate::worker::{Env, RunningWorker, cfg, start_worker_with, wait_final, wait_started};

/// A TCP proxy to Redis that can go silent: `freeze` makes every
/// connection open at that moment stop forwarding, in both directions,
/// without closing it (what a NAT or firewall that forgot a connection
/// does). Connections made later work.
struct Proxy {
    url: String,
    frozen_upto: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let frozen_upto = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(1));
        let (frozen, counter) = (frozen_upto.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, id, frozen.clone()));
                tokio::spawn(pipe(sr, cw, id, frozen.clone()));
            }
        });
        Proxy {
            url,
            frozen_upto,
            next,
        }
    }

    fn freeze(&self) {
        let last = self.next.load(Ordering::SeqCst) - 1;
        self.frozen_upto.store(last, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    frozen_upto: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id <= frozen_upto.load(Ordering::SeqCst) {
            // Silent: keep both ends open, forward nothing, ever.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `CLIENT KILL TYPE pubsub`: drops every subscriber's connection.
async fn kill_pubsub_connections(server: &RedisServer) {
    let mut conn = redis::Client::open(server.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 1, "no pub/sub connection to kill");
}

fn redis_addr(server: &RedisServer) -> String {
    let url = server.url();
    let rest = url.trim_start_matches("redis://");
    rest.split('/').next().unwrap().to_string()
}

/// A worker's pub/sub connection that goes silent is PINGed, found dead
/// and replaced: wake-ups reach the worker again. Before, it waited on the
/// dead connection forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_signal_connection_is_replaced() {
    let server = RedisServer::start();
    let proxy = Proxy::start(redis_addr(&server)).await;
    let live = Liveness {
        every: Duration::from_millis(300),
        timeout: Duration::from_millis(300),
    };
    let listener = RedisBroker::connect(&proxy.url)
        .await
        .unwrap()
        .with_liveness(live);
    let mut signals = listener.signals("w", &["work".to_string()]).await.unwrap();
    assert_eq!(signals.recv().await, Some(Signal::Reconnected));
    proxy.freeze();

    let direct = RedisBroker::connect(&server.url()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut reconnected = false;
        loop {
            // Work is announced on every round: the first announcements
            // go into the silent connection.
            direct
                .enqueue(vec![Job::new("work", "{}", chrono::Utc::now())])
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_millis(200), signals.recv()).await {
                Ok(Some(Signal::Reconnected)) => reconnected = true,
                Ok(Some(Signal::Work { .. })) if reconnected => return,
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => panic!("the signal feed ended"),
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no wake-up after the connection went silent");
}

/// The event feed behind `GET /v1/events`, job events of SSE and long
/// polls outlives a killed connection: it resubscribes, its receivers see
/// the next events. Before, the feed ended (`Closed`) and every open
/// stream with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_resubscribes_after_its_connection_is_killed() {
    let server = RedisServer::start();
    let b = RedisBroker::connect(&server.url())
        .await
        .unwrap()
        .with_liveness(Liveness {
            every: Duration::from_millis(300),
            timeout: Duration::from_millis(300),
        });
    let mut events = b.subscribe().await.unwrap();
    kill_pubsub_connections(&server).await;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Leasing a job publishes its STARTED event.
            let job = Job::new("work", "{}", chrono::Utc::now());
            let id = job.id;
            b.enqueue(vec![job]).await.unwrap();
            b.settle(SettleRequest {
                queue: "work".into(),
                worker: "w".into(),
                completions: Vec::new().into(),
                fetch: 1,
                due_check: false,
                holds_leases: false,
                lease: Duration::from_secs(60),
                prioritized: true,
                idle: 0,
                registered: false,
            })
            .await
            .unwrap();
            match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
                Ok(Ok(ev)) if ev.id == id => return,
                Ok(Err(broadcast::error::RecvError::Closed)) => panic!("the event feed ended"),
                _ => {}
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no event after the connection was killed");
}

/// A long poll whose feed is cut while the job ends reads the job again
/// once the feed is back, and returns. Before, the final event published
/// while the hub resubscribed was lost and the poll ran to its timeout
/// (a minute for `?wait=60s`; here an hour, so the test would hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_reads_again_after_its_feed_was_cut() {
    let server = RedisServer::start();
    let waiter = RedisBroker::connect(&server.url()).await.unwrap();
    let worker = RedisBroker::connect(&server.url()).await.unwrap();
    let job = Job::new("work", "{}", chrono::Utc::now());
    let id = job.id;
    worker.enqueue(vec![job]).await.unwrap();
    let d = worker
        .settle(settle("work", "w", vec![], 1))
        .await
        .unwrap()
        .deliveries
        .remove(0);
    let polling = tokio::spawn(async move { waiter.wait(id, Duration::from_secs(3600)).await });
    // The poll has read the job (STARTED) and listens.
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_pubsub_connections(&server).await;
    // It ends while the feed is down: its event is published to nobody.
    worker
        .settle(settle("work", "w", vec![success(&d, "1")], 1))
        .await
        .unwrap();
    let job = tokio::time::timeout(Duration::from_secs(30), polling)
        .await
        .expect("the long poll missed the end of the job")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Success);
}

/// The real broker with a fault a connection can show: its revoke
/// messages never arrive (`deaf`: a connection that dropped them), or
/// lease extensions never reach it (`unextended`: an outage longer than
/// the lease, for them alone), or its next `failing_gets` reads of a job
/// fail (a Redis restarting answers LOADING), or no subscription to
/// signals can be made (`refuse_signals`, as while Redis refuses
/// connections) and those made end ([`Faulty::lose_signals`]), or its
/// workflow launch records wait until released (`hold_launches`: a launch
/// that stalls). It notes every completion settled through it and counts
/// the calls of `signals`.
pub struct Faulty {
    inner: Arc<dyn Broker>,
    deaf: bool,
    unextended: bool,
    failing_gets: AtomicU64,
    refuse_signals: std::sync::atomic::AtomicBool,
    signal_calls: AtomicU64,
    cut: tokio::sync::watch::Sender<()>,
    settled: std::sync::Mutex<Vec<JobId>>,
    hold_launches: bool,
    /// Launch records waiting, and their release.
    launches_held: AtomicU64,
    launch_gate: tokio::sync::Semaphore,
    /// While set, `settle` fails as when Redis refuses connections.
    settles_down: std::sync::atomic::AtomicBool,
    /// `extend` calls so far.
    extends: AtomicU64,
    /// While set, `settle` answers after 200 ms, with the error of a
    /// broker that stopped answering (its timeout, shortened).
    settles_silent: std::sync::atomic::AtomicBool,
    /// `settle` calls so far.
    settle_calls: AtomicU64,
    /// When set, the next `extend` first runs another worker's due check
    /// (which takes back leases that ran out, and signals their queue),
    /// waits 100 ms for that signal to arrive, then extends: it finds
    /// those leases lost.
    reclaims_first: std::sync::atomic::AtomicBool,
    /// When set, `running` reads the running jobs, then leases one job of
    /// that queue as another worker (noted in `leased_in_running`), then
    /// answers what it read: a lease between the read and what follows.
    leases_in_running: std::sync::atomic::AtomicBool,
    leased_in_running: std::sync::Mutex<Vec<JobId>>,
    /// While set, `enqueue` fails as when Redis refuses connections.
    pub enqueues_down: std::sync::atomic::AtomicBool,
    /// While set, a push reaches the worker 300 ms late.
    pushes_late: Arc<std::sync::atomic::AtomicBool>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Broker>) -> Self {
        Faulty {
            inner,
            deaf: false,
            unextended: false,
            failing_gets: AtomicU64::new(0),
            refuse_signals: Default::default(),
            signal_calls: AtomicU64::new(0),
            cut: tokio::sync::watch::Sender::new(()),
            settled: Default::default(),
            hold_launches: false,
            launches_held: AtomicU64::new(0),
            launch_gate: tokio::sync::Semaphore::new(0),
            settles_down: Default::default(),
            extends: AtomicU64::new(0),
            settles_silent: Default::default(),
            settle_calls: AtomicU64::new(0),
            reclaims_first: Default::default(),
            leases_in_running: Default::default(),
            leased_in_running: Default::default(),
            enqueues_down: Default::default(),
            pushes_late: Default::default(),
        }
    }

    fn settled(&self) -> Vec<JobId> {
        self.settled.lock().unwrap().clone()
    }

    /// From now on `signals` fails as when Redis refuses connections, and
    /// every subscription made so far ends.
    fn lose_signals(&self) {
        self.refuse_signals.store(true, Ordering::SeqCst);
        self.cut.send_replace(());
    }

    /// Waits (10 s at most) until `signals` was called `n` times.
    async fn wait_signal_calls(&self, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.signal_calls.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("`signals` not called {n} times"));
    }
}

/// `hello` bound on `default`, and a worker configured by `config` on it
/// through a [`Faulty`] over `env`'s broker.
async fn hello_worker(env: &Env, config: WorkerConfig) -> (Arc<Faulty>, RunningWorker) {
    env.bind("hello", "hello", "default", |_| {}).await;
    let faulty = Arc::new(Faulty::new(env.broker.clone()));
    let w = start_worker_with(
        faulty.clone(),
        env.registry.clone(),
        Default::default(),
        config,
    );
    (faulty, w)
}

/// [`hello_worker`], once it ran a first job and its call after the run
/// found the queue empty: it is idle, registered for pushes.
async fn idle_hello_worker(env: &Env, config: WorkerConfig) -> (Arc<Faulty>, RunningWorker) {
    let (faulty, w) = hello_worker(env, config).await;
    let first = env.enqueue("hello", r#"{"name":"Ada"}"#).await;
    assert_eq!(
        wait_final(&env.broker, first).await.state,
        JobState::Success
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    (faulty, w)
}

/// Job `next` runs once, on a worker started now: no earlier worker held
/// it (it was never delivered before).
async fn runs_once_on_a_new_worker(env: &Env, next: JobId) {
    let w = start_worker_with(
        env.broker.clone(),
        env.registry.clone(),
        Default::default(),
        cfg(&["default"], 2),
    );
    let j = wait_final(&env.broker, next).await;
    assert_eq!((j.state, j.redeliveries), (JobState::Success, 0));
    w.stop().await;
}

/// `sleeper` bound on `default` (a 60 s time limit), and a worker of 2
/// slots and 2 s leases on it through `faulty`.
async fn sleeper_worker(env: &Env, faulty: Faulty) -> (Arc<Faulty>, RunningWorker) {
    env.bind("sleeper", "sleeper", "default", |b| {
        b.limits.time_limit_ms = Some(60_000)
    })
    .await;
    let faulty = Arc::new(faulty);
    let mut config = cfg(&["default"], 2);
    config.lease = Duration::from_secs(2);
    let w = start_worker_with(
        faulty.clone(),
        env.registry.clone(),
        Default::default(),
        config,
    );
    (faulty, w)
}

/// The error a call gets while Redis refuses connections.
fn refused() -> redis::RedisError {
    let refused = std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "Connection refused (a test's fault)",
    );
    redis::RedisError::from(refused)
}

/// CPU time this process has used (user and system), from `/proc`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((f[0] + f[1]) * 1000 / ticks)
}

#[async_trait]
impl Broker for Faulty {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn enqueue(&self, jobs: Vec<Job>) -> BrokerResult<Vec<Enqueued>> {
        if self.enqueues_down.load(Ordering::SeqCst) {
            return Err(refused().into());
        }
        self.inner.enqueue(jobs).await
    }
    async fn get(&self, id: JobId) -> BrokerResult<Option<Job>> {
        let fail = self
            .failing_gets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if fail.is_ok() {
            return Err(BrokerError::Protocol(
                "LOADING Redis is loading the dataset in memory".into(),
            ));
        }
        self.inner.get(id).await
    }
    async fn subscribe(&self) -> BrokerResult<broadcast::Receiver<JobEvent>> {
        self.inner.subscribe().await
    }
    fn want_record(&self, id: Option<JobId>) -> runner::queue::RecordWant {
        self.inner.want_record(id)
    }
    async fn revoke(&self, id: JobId, terminate: bool) -> BrokerResult<RevokeOutcome> {
        self.inner.revoke(id, terminate).await
    }
    async fn settle(&self, req: SettleRequest) -> BrokerResult<SettleReply> {
        self.settle_calls.fetch_add(1, Ordering::SeqCst);
        if self.settles_silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let timeout =
                std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out (a test's fault)");
            return Err(redis::RedisError::from(timeout).into());
        }
        if self.settles_down.load(Ordering::SeqCst) {
            return Err(refused().into());
        }
        self.settled
            .lock()
            .unwrap()
            .extend(req.completions.iter().map(|c| c.lease.id));
        self.inner.settle(req).await
    }
    async fn extend(&self, leases: &[Lease], lease: Duration) -> BrokerResult<Extended> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        if let Some(l) = leases.first()
            && self.reclaims_first.swap(false, Ordering::SeqCst)
        {
            let mut check = settle(&l.queue, "other", vec![], 0);
            check.due_check = true;
            self.inner.settle(check).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            return self.inner.extend(leases, lease).await;
        }
        if self.unextended {
            return Ok(Extended::default());
        }
        self.inner.extend(leases, lease).await
    }
    async fn progress(&self, lease: &Lease, progress: &Progress) -> BrokerResult<()> {
        self.inner.progress(lease, progress).await
    }
    async fn signals(
        &self,
        worker: &str,
        queues: &[String],
    ) -> BrokerResult<mpsc::UnboundedReceiver<Signal>> {
        self.signal_calls.fetch_add(1, Ordering::SeqCst);
        if self.refuse_signals.load(Ordering::SeqCst) {
            return Err(refused().into());
        }
        let mut inner = self.inner.signals(worker, queues).await?;
        let deaf = self.deaf;
        let late = self.pushes_late.clone();
        let mut cut = self.cut.subscribe();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    s = inner.recv() => match s {
                        Some(Signal::Revoke { .. }) if deaf => {}
                        Some(s @ Signal::Pushed { .. }) if late.load(Ordering::SeqCst) => {
                            let tx = tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                let _ = tx.send(s);
                            });
                        }
                        Some(s) => {
                            if tx.send(s).is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    // Cut (or the broker gone): the subscription ends.
                    _ = cut.changed() => return,
                }
            }
        });
        Ok(rx)
    }
    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()> {
        self.inner.heartbeat(worker, ttl).await
    }
    async fn worker_gone(&self, worker_id: &str) -> BrokerResult<()> {
        self.inner.worker_gone(worker_id).await
    }
    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>> {
        self.inner.workers().await
    }
    async fn register_queue(&self, queue: &str) -> BrokerResult<()> {
        self.inner.register_queue(queue).await
    }
    async fn queues(&self) -> BrokerResult<Vec<QueueStats>> {
        self.inner.queues().await
    }
    async fn history(
        &self,
        queues: &[String],
    ) -> BrokerResult<Vec<runner::queue::history::Minutes>> {
        self.inner.history(queues).await
    }
    async fn rate_usage(
        &self,
        queue: &str,
        limits: &[runner::queue::RateLimit],
    ) -> BrokerResult<Vec<u64>> {
        self.inner.rate_usage(queue, limits).await
    }
    async fn dead_letters(&self, queue: &str, limit: usize) -> BrokerResult<Vec<Job>> {
        self.inner.dead_letters(queue, limit).await
    }
    async fn replay(&self, queue: &str, ids: &[JobId]) -> BrokerResult<Vec<JobId>> {
        self.inner.replay(queue, ids).await
    }
    async fn purge(&self, queue: &str, filter: &PurgeFilter) -> BrokerResult<Vec<JobId>> {
        self.inner.purge(queue, filter).await
    }
    async fn running(&self, queue: &str) -> BrokerResult<Vec<Job>> {
        let running = self.inner.running(queue).await?;
        if self.leases_in_running.load(Ordering::SeqCst) {
            let reply = self.inner.settle(settle(queue, "other", vec![], 1)).await?;
            self.leased_in_running
                .lock()
                .unwrap()
                .extend(reply.deliveries.iter().map(|d| d.lease.id));
        }
        Ok(running)
    }
    async fn wf_create(&self, id: JobId, spec: &str, total: u64, made: i64) -> BrokerResult<bool> {
        self.inner.wf_create(id, spec, total, made).await
    }
    async fn wf_read(&self, id: JobId) -> BrokerResult<Option<runner::queue::WfStored>> {
        self.inner.wf_read(id).await
    }
    async fn wf_spec(&self, id: JobId) -> BrokerResult<Option<String>> {
        self.inner.wf_spec(id).await
    }
    async fn wf_mark(
        &self,
        id: JobId,
        made: i64,
        marks: &[runner::queue::WfMark],
        ttl: Duration,
    ) -> BrokerResult<Option<runner::queue::WfMarked>> {
        self.inner.wf_mark(id, made, marks, ttl).await
    }
    async fn wf_fields(&self, id: JobId, fields: &[String]) -> BrokerResult<Vec<Option<String>>> {
        self.inner.wf_fields(id, fields).await
    }
    async fn wf_launched(
        &self,
        id: JobId,
        launched: &[(String, JobId)],
    ) -> BrokerResult<Option<runner::queue::WfState>> {
        if self.hold_launches {
            self.launches_held.fetch_add(1, Ordering::SeqCst);
            self.launch_gate.acquire().await.unwrap().forget();
        }
        self.inner.wf_launched(id, launched).await
    }
    async fn wf_end(
        &self,
        id: JobId,
        to: runner::queue::WfState,
        ttl: Duration,
    ) -> BrokerResult<Option<runner::queue::WfState>> {
        self.inner.wf_end(id, to, ttl).await
    }
    async fn outbox_done(&self, queue: &str, ids: &[JobId]) -> BrokerResult<()> {
        self.inner.outbox_done(queue, ids).await
    }
    async fn outbox_later(&self, queue: &str, ids: &[JobId], after: Duration) -> BrokerResult<()> {
        self.inner.outbox_later(queue, ids, after).await
    }
    async fn outbox(
        &self,
        queue: &str,
        min_age: Duration,
        limit: usize,
    ) -> BrokerResult<Vec<JobId>> {
        self.inner.outbox(queue, min_age, limit).await
    }
    async fn list(&self, query: &runner::queue::JobQuery) -> BrokerResult<runner::queue::JobPage> {
        self.inner.list(query).await
    }
    async fn inspect(&self, timeout: Duration) -> BrokerResult<Vec<runner::queue::WorkerSnapshot>> {
        self.inner.inspect(timeout).await
    }
    async fn answer(
        &self,
        reply: &str,
        snapshot: &runner::queue::WorkerSnapshot,
    ) -> BrokerResult<()> {
        self.inner.answer(reply, snapshot).await
    }
    async fn scheduled(
        &self,
        queue: &str,
        limit: usize,
    ) -> BrokerResult<Vec<(chrono::DateTime<chrono::Utc>, Job)>> {
        self.inner.scheduled(queue, limit).await
    }
}

/// A job's event stream whose read after a gap fails (Redis, restarting,
/// answers LOADING) keeps going: it logs, reads again later, and the job's
/// end still reaches the client. Before, the failed read ended the stream
/// as if the job had ended, with no final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stream_outlives_a_failed_read_after_a_gap() {
    let server = RedisServer::start();
    let api = FaultyApi::start(Some(server.url())).await;
    let (faulty, url) = (api.faulty.clone(), api.url.clone());
    // A job nobody runs.
    let job = Job::new("work", "{}", chrono::Utc::now());
    let id = job.id;
    api.broker.enqueue(vec![job]).await.unwrap();
    let mut res = crate::support::http_client()
        .get(format!("{url}/v1/jobs/{id}/events"))
        .bearer_auth(crate::api::SUBMIT)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    /// Reads `res` into `body` until it holds `until`; false when the
    /// stream ends first.
    async fn read_until(body: &mut String, res: &mut reqwest::Response, until: &str) -> bool {
        while !body.contains(until) {
            match res.chunk().await.unwrap() {
                Some(c) => body.push_str(&String::from_utf8_lossy(&c)),
                None => return false,
            }
        }
        true
    }
    let mut body = String::new();
    // The first state: the stream has subscribed and read the job.
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        read_until(&mut body, &mut res, "PENDING"),
    )
    .await
    .unwrap();
    assert!(first, "{body}");
    // The feed is cut and comes back (a gap): the read that follows fails.
    faulty.failing_gets.store(1, Ordering::SeqCst);
    kill_pubsub_connections(&server).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while faulty.failing_gets.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no read after the gap");
    api.broker.revoke(id, false).await.unwrap();
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        read_until(&mut body, &mut res, "REVOKED"),
    )
    .await
    .expect("the stream neither ended nor sent the end");
    assert!(ended, "the stream ended without the job's end: {body}");
    drop(res);
    api.stop().await;
}

/// The API served over a [`Faulty`] on the core's broker (Redis at
/// `redis_url`, or embedded), with the test tokens.
struct FaultyApi {
    url: String,
    /// The core's broker itself.
    broker: Arc<dyn Broker>,
    faulty: Arc<Faulty>,
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl FaultyApi {
    async fn start(redis_url: Option<String>) -> FaultyApi {
        use runner::app::{self, Core};
        let mut config = runner::config::Config::default();
        config.broker.redis_url = redis_url;
        config.auth.admin.push(crate::api::ADMIN.into());
        config.auth.submit.push(crate::api::SUBMIT.into());
        config.check().unwrap();
        let core = Core::open(&config, crate::support::sandbox())
            .await
            .unwrap();
        let faulty = Arc::new(Faulty::new(core.broker.clone()));
        let mut ctx = app::api_context(&core, &config, app::auth_from(&config).unwrap()).unwrap();
        ctx.broker = faulty.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(runner::api::serve(listener, ctx, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        FaultyApi {
            url,
            broker: core.broker.clone(),
            faulty,
            stop,
            serving,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.serving).await;
    }
}

/// A job leased by a worker while a revoke of its task reads the running
/// jobs is revoked all the same. Before, the revoke read the running jobs
/// and then purged the waiting ones: a job leased between the two was in
/// neither, and ran.
async fn a_revoke_by_task_finds_a_job_leased_while_it_runs(redis_url: Option<String>) {
    let api = FaultyApi::start(redis_url).await;
    // On queue `work`, of task `mail`.
    let mut job = Job::new("work", "{}", chrono::Utc::now());
    job.task = Some("mail".into());
    let id = job.id;
    api.broker.enqueue(vec![job]).await.unwrap();
    api.faulty.leases_in_running.store(true, Ordering::SeqCst);
    let res = crate::support::http_client()
        .post(format!("{}/v1/jobs/revoke", api.url))
        .bearer_auth(crate::api::ADMIN)
        .json(&serde_json::json!({ "task": "mail" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let reply: serde_json::Value = res.json().await.unwrap();
    let job = api.broker.get(id).await.unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Revoked,
        "{reply}; leased meanwhile: {:?}",
        api.faulty.leased_in_running.lock().unwrap()
    );
    assert_eq!(
        reply["purged"],
        serde_json::json!([id.to_string()]),
        "{reply}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_by_task_finds_a_job_leased_while_it_runs_embedded() {
    a_revoke_by_task_finds_a_job_leased_while_it_runs(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_by_task_finds_a_job_leased_while_it_runs_on_redis() {
    let server = RedisServer::start();
    a_revoke_by_task_finds_a_job_leased_while_it_runs(Some(server.url())).await;
}

/// A worker that never hears a revoke-terminate stops the run at its next
/// lease extension (every third of the lease). Before, the job ran to its
/// end (revokes were pub/sub only).
async fn a_worker_that_misses_a_revoke_learns_it_from_its_lease(env: Env) {
    env.bind("sleeper", "sleeper", "default", |b| {
        b.limits.time_limit_ms = Some(60_000)
    })
    .await;
    let deaf: Arc<dyn Broker> = Arc::new(Faulty {
        deaf: true,
        ..Faulty::new(env.broker.clone())
    });
    let w = start_worker_with(
        deaf,
        env.registry.clone(),
        Default::default(),
        cfg(&["default"], 1),
    );
    let mut events = env.broker.subscribe().await.unwrap();
    let id = env.enqueue("sleeper", r#"{"ms":30000}"#).await;
    wait_started(&mut events, id).await;
    env.broker.revoke(id, true).await.unwrap();
    let j = tokio::time::timeout(Duration::from_secs(15), wait_final(&env.broker, id))
        .await
        .expect("the run was not stopped: it would have slept 30 s");
    assert_eq!(j.state, JobState::Revoked, "{j:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_misses_a_revoke_learns_it_from_its_lease_on_redis() {
    a_worker_that_misses_a_revoke_learns_it_from_its_lease(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_misses_a_revoke_learns_it_from_its_lease_embedded() {
    a_worker_that_misses_a_revoke_learns_it_from_its_lease(Env::embedded().await).await;
}

/// A step launched while its workflow is revoked with terminate runs no
/// further: its launch pushed it to an idle worker, which started it, but
/// the launch was not yet recorded, so the revoke could not see it. The
/// launch finds the workflow revoked and stops it. Before, it revoked the
/// step without terminate, and the step ran to its end.
async fn a_step_launched_as_its_workflow_is_terminated_is_stopped(env: Env) {
    env.bind("sleeper", "sleeper", "default", |b| {
        b.limits.time_limit_ms = Some(60_000)
    })
    .await;
    let faulty = Arc::new(Faulty {
        hold_launches: true,
        ..Faulty::new(env.broker.clone())
    });
    let w = start_worker_with(
        faulty.clone(),
        env.registry.clone(),
        Default::default(),
        cfg(&["default"], 2),
    );
    let mut events = env.broker.subscribe().await.unwrap();
    let wf = runner::workflow::Workflows::new(env.producer.clone());
    let req = serde_json::from_value(serde_json::json!({"workflow": {"chain": [
        {"task": "sleeper", "input": {"ms": 1}},
        {"task": "sleeper", "input": {"ms": 30000}}
    ]}}))
    .unwrap();
    let s = wf
        .submit(runner::producer::Caller::Admin, &req)
        .await
        .unwrap();
    let ids = wf.member_ids(s.id).await.unwrap().unwrap();
    // The worker ran the first step and launched the second: it runs,
    // and its launch record waits.
    wait_started(&mut events, ids[1]).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while faulty.launches_held.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the launch record is held");
    assert_eq!(
        wf.revoke(s.id, true).await.unwrap(),
        Some(runner::queue::WfState::Revoked)
    );
    faulty.launch_gate.add_permits(1);
    let j = tokio::time::timeout(Duration::from_secs(15), wait_final(&env.broker, ids[1]))
        .await
        .expect("the step was not stopped: it would have slept 30 s");
    assert_eq!(j.state, JobState::Revoked, "{j:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_launched_as_its_workflow_is_terminated_is_stopped_on_redis() {
    a_step_launched_as_its_workflow_is_terminated_is_stopped(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_launched_as_its_workflow_is_terminated_is_stopped_embedded() {
    a_step_launched_as_its_workflow_is_terminated_is_stopped(Env::embedded().await).await;
}

/// A running job whose lease ran out unextended (an outage longer than
/// the lease, for the extensions) and that a due check put back is leased
/// to the same worker again: it keeps running under the new lease and is
/// settled once, under it. Before, the new lease replaced the old one's
/// entry: the job started a second time in the worker, and the first run's
/// end was settled under the old lease (stale) and dropped the new one's
/// entry.
async fn a_job_leased_again_to_its_worker_runs_once(env: Env) {
    let (faulty, w) = sleeper_worker(
        &env,
        Faulty {
            unextended: true,
            ..Faulty::new(env.broker.clone())
        },
    )
    .await;
    let mut events = env.broker.subscribe().await.unwrap();
    let id = env.enqueue("sleeper", r#"{"ms":6000}"#).await;
    wait_started(&mut events, id).await;
    // Past the lease: a due check (another worker's, if the worker's own
    // did not come first) takes it back, and the worker, a slot free,
    // leases it again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut check = settle("default", "other", vec![], 0);
    check.due_check = true;
    env.broker.settle(check).await.unwrap();
    wait_started(&mut events, id).await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    // (A second run would end about 2.5 s after the first.)
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(faulty.settled(), vec![id]);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_leased_again_to_its_worker_runs_once_on_redis() {
    a_job_leased_again_to_its_worker_runs_once(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_leased_again_to_its_worker_runs_once_embedded() {
    a_job_leased_again_to_its_worker_runs_once(Env::embedded().await).await;
}

/// A running job whose lease ran out unextended is taken back by another
/// worker's due check, which signals its queue, and the worker's next
/// extension finds the lease lost and stops the run. The signal is read
/// before the stopped run is collected, and the worker leases the job
/// again. The new lease runs it anew once the stopped run has ended.
/// Before, the new lease was taken as the stopped run's own, which then
/// ended REVOKED under it: the job ended REVOKED, revoked by nobody.
async fn a_job_leased_again_while_its_run_stops_runs_anew(env: Env) {
    let (faulty, w) = sleeper_worker(
        &env,
        Faulty {
            unextended: true,
            ..Faulty::new(env.broker.clone())
        },
    )
    .await;
    let mut events = env.broker.subscribe().await.unwrap();
    let id = env.enqueue("sleeper", r#"{"ms":3000}"#).await;
    wait_started(&mut events, id).await;
    // Past the lease: the next extension finds it taken back.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    faulty.reclaims_first.store(true, Ordering::SeqCst);
    wait_started(&mut events, id).await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    w.stop().await;
}

/// On the embedded broker only: on Redis this sequence does not force the
/// race (the test passed without the fix: the worker collected the
/// stopped run before it leased the job again). The fix is the worker's,
/// the same for both brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_leased_again_while_its_run_stops_runs_anew_embedded() {
    a_job_leased_again_while_its_run_stops_runs_anew(Env::embedded().await).await;
}

/// A job whose result could not be stored (the broker refused calls) past
/// its lease is taken back by another worker's due check; when the
/// broker answers again, the worker's call finds the result stale, and
/// the worker leases the job again. The result it holds is stored under
/// the new lease: the job runs once. Before, it ran a second time.
async fn a_result_refused_as_stale_is_stored_under_the_next_lease(env: Env) {
    let (faulty, w) = sleeper_worker(&env, Faulty::new(env.broker.clone())).await;
    let mut events = env.broker.subscribe().await.unwrap();
    let id = env.enqueue("sleeper", r#"{"ms":300}"#).await;
    wait_started(&mut events, id).await;
    faulty.settles_down.store(true, Ordering::SeqCst);
    // The run ends, its result is kept, and its lease runs out.
    tokio::time::sleep(Duration::from_millis(2800)).await;
    let mut check = settle("default", "other", vec![], 0);
    check.due_check = true;
    assert_eq!(env.broker.settle(check).await.unwrap().reclaimed, 1);
    faulty.settles_down.store(false, Ordering::SeqCst);
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    // (A second run would end 300 ms after it started.)
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stats = w.stop().await;
    assert_eq!(stats.processed, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_refused_as_stale_is_stored_under_the_next_lease_on_redis() {
    a_result_refused_as_stale_is_stored_under_the_next_lease(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_refused_as_stale_is_stored_under_the_next_lease_embedded() {
    a_result_refused_as_stale_is_stored_under_the_next_lease(Env::embedded().await).await;
}

/// A push lost with its worker's signal connection (killed just before the
/// enqueue that pushed to the worker, idle in one slot while the other runs
/// a long job) runs once its lease runs out: the worker, reconnected,
/// looks again then for jobs leased to it that it never heard of. Before,
/// a worker holding leases in the queue left its own out of the wake-up
/// (`next_due`), and the pushed job waited for the 15-minute safety check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_lost_with_the_signal_connection_runs_after_its_lease() {
    let env = Env::redis().await;
    env.bind("hello", "hello", "work", |_| {}).await;
    env.bind("sleep", "sleeper", "work", |_| {}).await;
    let mut c = cfg(&["work"], 2);
    c.lease = Duration::from_secs(2);
    let w = env.worker(c).await;
    let server = env.redis.as_ref().unwrap();
    let mut admin = redis::Client::open(server.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut events = env.broker.subscribe().await.unwrap();
    let long = env.enqueue("sleep", r#"{"ms": 8000}"#).await;
    wait_started(&mut events, long).await;
    // A job run in the other slot: its settle registers the worker for
    // pushes with its free slot (the push that brought the long job used
    // the first registration up).
    let first = env.enqueue("hello", r#"{"name": "first"}"#).await;
    assert_eq!(
        wait_final(&env.broker, first).await.state,
        JobState::Success
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let idle: Vec<String> = redis::cmd("HVALS")
            .arg("runner:{work}:idle")
            .query_async(&mut admin)
            .await
            .unwrap();
        if idle.iter().any(|v| !v.starts_with("p|")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill_pubsub_connections(server).await;
    // The enqueue leases the job to the worker (a push) and publishes it
    // while the worker's signal connection is down (it reconnects after
    // 100 ms).
    let id = env.enqueue("hello", r#"{"name": "lost"}"#).await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    assert_eq!(wait_final(&env.broker, long).await.state, JobState::Success);
    w.stop().await;
}

/// A worker that cannot subscribe to its queues' signals at start (Redis
/// refuses connections) stops as soon as it is told to. Before, it
/// retried every second and heard the stop only once Redis was back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_subscribe_stops_when_told() {
    let env = Env::embedded().await;
    let faulty = Arc::new(Faulty::new(env.broker.clone()));
    faulty.lose_signals();
    let w = start_worker_with(
        faulty.clone(),
        env.registry.clone(),
        Default::default(),
        cfg(&["default"], 1),
    );
    // Refused, and tried again.
    faulty.wait_signal_calls(2).await;
    let stats = tokio::time::timeout(Duration::from_secs(5), w.stop())
        .await
        .expect("the worker did not stop while it could not subscribe");
    assert_eq!(stats.processed, 0);
}

/// A worker whose subscription ended and that cannot subscribe again
/// stops as soon as it is told to, and a job it ran before is counted.
/// Before, it retried every second and heard the stop only once Redis was
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_subscribe_again_stops_when_told() {
    let env = Env::embedded().await;
    let (faulty, w) = hello_worker(&env, cfg(&["default"], 1)).await;
    let id = env.enqueue("hello", r#"{"name": "before"}"#).await;
    assert_eq!(wait_final(&env.broker, id).await.state, JobState::Success);
    faulty.lose_signals();
    // The subscription ended; subscribing again was refused, and tried
    // again.
    faulty.wait_signal_calls(3).await;
    let stats = tokio::time::timeout(Duration::from_secs(5), w.stop())
        .await
        .expect("the worker did not stop while it could not subscribe again");
    assert_eq!(stats.processed, 1);
}

/// A worker whose calls fail waits for its retry time. Before, a failed
/// call marked results as waiting to be stored (even when it carried
/// none) and their flush time, 20 ms later, woke the loop; the loop could
/// not call the broker before its retry time, so it woke again at once:
/// one core busy for the whole outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_quietly_while_its_broker_is_down() {
    let env = Env::embedded().await;
    let (faulty, w) = hello_worker(&env, cfg(&["default"], 2)).await;
    // Started and idle; then every call fails, and a job wakes it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    faulty.settles_down.store(true, Ordering::SeqCst);
    env.enqueue("hello", r#"{"name":"a"}"#).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time() - before;
    // A busy loop takes a core: about 3 s in 3 s.
    assert!(
        used < Duration::from_secs(1),
        "the worker used {used:?} of CPU in 3 s of outage"
    );
    faulty.settles_down.store(false, Ordering::SeqCst);
    w.stop().await;
}

/// Lease extensions start a period after a job is leased. Before, the
/// extension timer was polled only while jobs were held, and its ticks
/// missed while the worker was idle fired together: a burst of calls to
/// the broker (three per lease of idle time) when the next job came. On
/// Redis the job is pushed to the idle worker while it waits.
async fn a_worker_idle_for_long_extends_no_burst_of_leases(env: Env) {
    env.bind("sleeper", "sleeper", "default", |b| {
        b.limits.time_limit_ms = Some(60_000)
    })
    .await;
    let faulty = Arc::new(Faulty::new(env.broker.clone()));
    let mut config = cfg(&["default"], 1);
    // Extended every 100 ms while a job runs.
    config.lease = Duration::from_millis(300);
    let w = start_worker_with(
        faulty.clone(),
        env.registry.clone(),
        Default::default(),
        config,
    );
    // Idle for 30 periods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(faulty.extends.load(Ordering::SeqCst), 0);
    let id = env.enqueue("sleeper", r#"{"ms":250}"#).await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    w.stop().await;
    // A run of 250 ms spans two or three periods; the burst was about 30.
    let n = faulty.extends.load(Ordering::SeqCst);
    assert!(n <= 10, "{n} lease extensions for one run of 250 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_idle_for_long_extends_no_burst_of_leases_on_redis() {
    a_worker_idle_for_long_extends_no_burst_of_leases(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_idle_for_long_extends_no_burst_of_leases_embedded() {
    a_worker_idle_for_long_extends_no_burst_of_leases(Env::embedded().await).await;
}

/// A worker that stops while its broker is away ends its registration as
/// idle once the broker is back: it tries again before it stops. Before,
/// it gave up after its first failed call, the registration stayed, and
/// the next job was pushed to the stopped worker: it waited a lease and
/// ran as a redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_during_an_outage_is_pushed_nothing() {
    let env = Env::redis().await;
    let (faulty, w) = idle_hello_worker(&env, cfg(&["default"], 2)).await;
    faulty.settles_down.store(true, Ordering::SeqCst);
    let stopping = tokio::spawn(w.stop());
    tokio::time::sleep(Duration::from_millis(500)).await;
    faulty.settles_down.store(false, Ordering::SeqCst);
    stopping.await.unwrap();
    let next = env.enqueue("hello", r#"{"name":"Bo"}"#).await;
    runs_once_on_a_new_worker(&env, next).await;
}

/// A worker told to stop just as a job is pushed to it, before the push
/// reaches it, learns from its last call that a push is on its way: it
/// waits for it and hands the job back. Before, it stopped at once, and
/// the job stayed leased to it until its lease ran out, then ran
/// elsewhere as a redelivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopping_as_a_job_is_pushed_to_it_hands_it_back() {
    let env = Env::redis().await;
    let (faulty, w) = idle_hello_worker(&env, cfg(&["default"], 2)).await;
    faulty.pushes_late.store(true, Ordering::SeqCst);
    let next = env.enqueue("hello", r#"{"name":"Bo"}"#).await;
    let leased = env.broker.get(next).await.unwrap().unwrap();
    assert_eq!(leased.state, JobState::Started, "pushed to the idle worker");
    w.stop().await;
    let j = env.broker.get(next).await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.worker.as_deref(), j.redeliveries),
        (JobState::Pending, None, 0),
        "handed back"
    );
    runs_once_on_a_new_worker(&env, next).await;
}

/// A worker that stops while its broker does not answer gives up ending
/// its registration as idle once its grace period is over: the
/// registration expires on its own. (Each call against a silent Redis
/// waits out its 30 s timeout; 50 of them would hold the stop for 25
/// minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopping_while_its_broker_is_silent_gives_up_in_time() {
    let env = Env::redis().await;
    let mut config = cfg(&["default"], 2);
    config.grace = Duration::from_secs(1);
    let (faulty, w) = idle_hello_worker(&env, config).await;
    faulty.settles_silent.store(true, Ordering::SeqCst);
    let before = faulty.settle_calls.load(Ordering::SeqCst);
    w.stop().await;
    // A call every 400 ms for the 1 s of grace: about 4; 51 without a
    // deadline.
    let calls = faulty.settle_calls.load(Ordering::SeqCst) - before;
    assert!(calls <= 12, "{calls} calls while stopping");
}
