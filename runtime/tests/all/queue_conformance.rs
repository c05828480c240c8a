//! One conformance suite for the `Broker` contract, run against the embedded
//! broker, against Redis (a real `redis-server` per test) and against a
//! Redis Cluster of three masters (real `redis-server`s in cluster mode).
//!
//! These tests talk to the broker the way a worker does (settle, extend),
//! without wasm: the module bytes bound below are placeholders that nothing
//! here loads.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use runner::producer::{EnqueueError, EnqueueRequest, Producer};
use runner::queue::{
    Broker, Completion, EmbeddedBroker, Job, JobError, JobFailure, JobId, JobQuery, JobState,
    Lease, PURGED, PurgeFilter, RateLimit, RedisBroker, RevokeOutcome, SettleRequest, Settlement,
    Signal,
};
use runner::registry::{LocalRegistry, Registry, TaskBinding};

use crate::redis_support::{RedisCluster, RedisServer, calls_of, command_calls};

pub struct Env {
    pub broker: Arc<dyn Broker>,
    pub producer: Producer,
    _redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

async fn registry() -> Arc<dyn Registry> {
    let reg = LocalRegistry::in_memory();
    let hash = reg
        .put_module(b"placeholder: the queue never loads modules")
        .await
        .unwrap();
    let mut b = TaskBinding::new("echo", hash);
    b.queue = "work".into();
    reg.bind(b).await.unwrap();
    let mut other = TaskBinding::new("other", hash);
    other.queue = "work".into();
    reg.bind(other).await.unwrap();
    let mut limited = TaskBinding::new("limited", hash);
    limited.queue = "slow".into();
    limited.rate_limit = Some("5/1s".into());
    reg.bind(limited).await.unwrap();
    Arc::new(reg)
}

pub async fn embedded() -> Env {
    let broker: Arc<dyn Broker> = Arc::new(EmbeddedBroker::new());
    Env {
        producer: Producer::new(broker.clone(), registry().await),
        broker,
        _redis: None,
        _cluster: None,
    }
}

/// A Redis Cluster of three masters, as the ACL user of
/// `deploy/redis-users.acl` on every node: queues, the job index and
/// workflows hash to different slots, on different masters.
pub async fn cluster() -> Env {
    let acl = crate::redis_tls::runner_acl("conformance");
    let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_with_acl(3, 0, &acl))
        .await
        .unwrap();
    let url = cluster.url_as("runner", "conformance");
    // Strict keys: every script must declare every key it touches.
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::connect(&url).await.unwrap().with_strict_keys());
    Env {
        producer: Producer::new(broker.clone(), registry().await),
        broker,
        _redis: None,
        _cluster: Some(cluster),
    }
}

/// An environment on `broker`, on a cluster the environment keeps.
pub(crate) async fn on_cluster(broker: RedisBroker, cluster: RedisCluster) -> Env {
    let broker: Arc<dyn Broker> = Arc::new(broker);
    Env {
        producer: Producer::new(broker.clone(), registry().await),
        broker,
        _redis: None,
        _cluster: Some(cluster),
    }
}

/// Redis, as the ACL user of `deploy/redis-users.acl`: every case of the
/// suite also checks that the documented rules allow what the broker does.
pub async fn redis() -> Env {
    let server = RedisServer::start_with_acl(&crate::redis_tls::runner_acl("conformance"));
    let url = server.url_as("runner", "conformance");
    // Strict keys: every script must declare every key it touches.
    let broker: Arc<dyn Broker> =
        Arc::new(RedisBroker::connect(&url).await.unwrap().with_strict_keys());
    Env {
        producer: Producer::new(broker.clone(), registry().await),
        broker,
        _redis: Some(server),
        _cluster: None,
    }
}

/// An environment on a server the caller keeps.
pub(crate) async fn redis_on(server: &RedisServer) -> Env {
    let broker: Arc<dyn Broker> = Arc::new(RedisBroker::connect(&server.url()).await.unwrap());
    Env {
        producer: Producer::new(broker.clone(), registry().await),
        broker,
        _redis: None,
        _cluster: None,
    }
}

pub(crate) fn settle(
    queue: &str,
    worker: &str,
    completions: Vec<Completion>,
    fetch: usize,
) -> SettleRequest {
    SettleRequest {
        queue: queue.into(),
        worker: worker.into(),
        completions: completions.into(),
        fetch,
        due_check: true,
        holds_leases: false,
        lease: Duration::from_secs(30),
        prioritized: true,
        idle: 0,
        registered: false,
    }
}

/// `d` ended in `state` (with `result`), kept as a dead letter when `dead`.
fn ended(
    d: &runner::queue::Delivery,
    state: JobState,
    result: Option<&str>,
    dead: bool,
) -> Completion {
    let mut job = d.job.clone();
    job.state = state;
    job.result = result.map(str::to_string);
    job.finished_at = Some(Utc::now());
    Completion {
        lease: d.lease.clone(),
        settlement: Settlement::Finish { job, dead },
        had_progress: false,
    }
}

pub(crate) fn success(d: &runner::queue::Delivery, result: &str) -> Completion {
    ended(d, JobState::Success, Some(result), false)
}

fn call(input: &str) -> EnqueueRequest {
    EnqueueRequest::task("echo", input)
}

pub(crate) async fn enqueue_lease_and_succeed(env: Env) {
    let b = &env.broker;
    let mut ids = Vec::new();
    for i in 0..3 {
        let e = env
            .producer
            .enqueue(call(&format!("{{\"n\":{i}}}")))
            .await
            .unwrap();
        assert!(e.created);
        assert_eq!(e.job.queue, "work");
        ids.push(e.job.id);
    }
    assert_eq!(
        b.get(ids[0]).await.unwrap().unwrap().state,
        JobState::Pending
    );
    let stats = b.queues().await.unwrap();
    let work = stats.iter().find(|q| q.name == "work").unwrap();
    assert_eq!((work.ready, work.in_flight), (3, 0));

    let r = b.settle(settle("work", "w1", vec![], 10)).await.unwrap();
    assert_eq!(r.deliveries.len(), 3);
    // FIFO.
    let got: Vec<_> = r.deliveries.iter().map(|d| d.job.id).collect();
    assert_eq!(got, ids);
    let live = b.get(ids[1]).await.unwrap().unwrap();
    assert_eq!(live.state, JobState::Started);
    assert_eq!(live.worker.as_deref(), Some("w1"));
    let work = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "work")
        .unwrap();
    assert_eq!((work.ready, work.in_flight), (0, 3));

    let done: Vec<_> = r
        .deliveries
        .iter()
        .map(|d| success(d, "{\"ok\":true}"))
        .collect();
    let r2 = b.settle(settle("work", "w1", done, 10)).await.unwrap();
    assert!(r2.deliveries.is_empty() && r2.stale.is_empty());
    for id in &ids {
        let j = b.get(*id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Success);
        assert_eq!(j.result_value(), Some(serde_json::json!({"ok": true})));
    }
    let work = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "work")
        .unwrap();
    assert_eq!((work.ready, work.in_flight, work.delayed), (0, 0, 0));
}

async fn idempotency_key_returns_first_job(env: Env) {
    let mut req = call("{}");
    req.idempotency_key = Some("welcome-42".into());
    let first = env.producer.enqueue(req.clone()).await.unwrap();
    let second = env.producer.enqueue(req.clone()).await.unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.job.id, second.job.id);
    // Within one batch too.
    let batch = env
        .producer
        .enqueue_batch(vec![req.clone(), req])
        .await
        .unwrap();
    assert!(batch.iter().all(|e| !e.created && e.job.id == first.job.id));
    let r = env
        .broker
        .settle(settle("work", "w", vec![], 10))
        .await
        .unwrap();
    assert_eq!(r.deliveries.len(), 1);
    // Once the job has ended, the key still names it: its final record
    // comes back (on Redis, read by a second call that declares its key).
    env.broker
        .settle(settle(
            "work",
            "w",
            vec![success(&r.deliveries[0], "\"done\"")],
            0,
        ))
        .await
        .unwrap();
    let mut req = call("{}");
    req.idempotency_key = Some("welcome-42".into());
    let third = env.producer.enqueue(req).await.unwrap();
    assert!(!third.created);
    assert_eq!(third.job.id, first.job.id);
    assert_eq!(third.job.state, JobState::Success);
    assert_eq!(third.job.result.as_deref(), Some("\"done\""));
}

/// A workflow step's job is stored once by its id (derived from the
/// workflow and the step): enqueued again in the same call, in a later
/// call while it waits, or once it has ended, it comes back as the first
/// job (its final record, once ended) and nothing new waits.
async fn a_workflow_step_is_stored_once_by_its_id(env: Env) {
    let b = &env.broker;
    let wf = JobId::new();
    let step = |path: &str, input: &str| {
        let mut j = Job::new("work", input, Utc::now());
        j.task = Some("echo".into());
        j.workflow = Some(runner::queue::job::WorkflowRef {
            id: wf,
            path: path.into(),
        });
        j
    };
    let (a, c) = (
        step("workflow.group[0]", "1"),
        step("workflow.group[1]", "2"),
    );
    let first = b
        .enqueue(vec![a.clone(), a.clone(), c.clone()])
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|e| e.created).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!(first[1].job.id, a.id);
    // Again while both wait, with a new step between them.
    let mut again_a = a.clone();
    again_a.input = "changed".into();
    let d = step("workflow.group[2]", "3");
    let second = b
        .enqueue(vec![again_a.clone(), d.clone(), c.clone()])
        .await
        .unwrap();
    assert_eq!(
        second.iter().map(|e| e.created).collect::<Vec<_>>(),
        [false, true, false]
    );
    assert_eq!(second[0].job.input, "1", "the first record comes back");
    let r = b.settle(settle("work", "w", vec![], 10)).await.unwrap();
    let mut leased: Vec<JobId> = r.deliveries.iter().map(|d| d.job.id).collect();
    leased.sort();
    let mut want = vec![a.id, c.id, d.id];
    want.sort();
    assert_eq!(leased, want, "each step once");
    // Once ended, the final records come back: one step ended, one running.
    let da = r.deliveries.iter().find(|d| d.job.id == a.id).unwrap();
    b.settle(settle("work", "w", vec![success(da, "\"a\"")], 0))
        .await
        .unwrap();
    let third = b.enqueue(vec![again_a, c.clone()]).await.unwrap();
    assert!(third.iter().all(|e| !e.created));
    assert_eq!(third[0].job.state, JobState::Success);
    assert_eq!(third[0].job.result.as_deref(), Some("\"a\""));
    assert_eq!(third[1].job.id, c.id);
    assert!(!third[1].job.state.is_final(), "{:?}", third[1].job);
    let r = b.settle(settle("work", "w2", vec![], 10)).await.unwrap();
    assert!(r.deliveries.is_empty(), "nothing new waits");
}

async fn countdown_waits_in_the_broker(env: Env) {
    let b = &env.broker;
    let mut req = call("{}");
    req.countdown_secs = Some(0.6);
    let e = env.producer.enqueue(req).await.unwrap();
    let r = b.settle(settle("work", "w", vec![], 10)).await.unwrap();
    assert!(
        r.deliveries.is_empty(),
        "a delayed job must not be delivered early"
    );
    let due = r
        .next_due
        .expect("the reply names when the delayed job is due");
    assert!(due > Utc::now() && due <= Utc::now() + chrono::Duration::milliseconds(700));
    let s = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "work")
        .unwrap();
    assert_eq!((s.ready, s.delayed), (0, 1));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = b.settle(settle("work", "w", vec![], 10)).await.unwrap();
    assert_eq!(r.deliveries.len(), 1);
    assert_eq!(r.deliveries[0].job.id, e.job.id);
}

async fn expired_lease_is_redelivered_and_late_settlement_is_stale(env: Env) {
    let b = &env.broker;
    let e = env.producer.enqueue(call("{}")).await.unwrap();
    let mut req = settle("work", "dying", vec![], 1);
    req.lease = Duration::from_millis(300);
    let first = b.settle(req).await.unwrap().deliveries;
    assert_eq!(first.len(), 1);
    // Before the lease ends nobody else gets it.
    let r = b.settle(settle("work", "other", vec![], 1)).await.unwrap();
    assert!(r.deliveries.is_empty());
    assert_eq!(r.reclaimed, 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = b.settle(settle("work", "other", vec![], 1)).await.unwrap();
    assert_eq!(r.deliveries.len(), 1, "an expired lease puts the job back");
    // Counted (runner_leases_reclaimed_total) by the worker that took it.
    assert_eq!(r.reclaimed, 1);
    assert_eq!(r.deliveries[0].job.id, e.job.id);
    assert_eq!(r.deliveries[0].lease.redeliveries, 1);
    // The first worker wakes up late: its result is refused.
    let late = b
        .settle(settle("work", "dying", vec![success(&first[0], "1")], 0))
        .await
        .unwrap();
    assert_eq!(late.stale, vec![e.job.id]);
    let ok = b
        .settle(settle(
            "work",
            "other",
            vec![success(&r.deliveries[0], "2")],
            0,
        ))
        .await
        .unwrap();
    assert!(ok.stale.is_empty());
    assert_eq!(
        b.get(e.job.id).await.unwrap().unwrap().result.as_deref(),
        Some("2")
    );
}

/// A worker that holds the earliest lease still learns when another
/// worker's later lease runs out (so that it reclaims it within one lease
/// period if that worker died, not at the safety tick). Redis once looked
/// only at the earliest lease.
async fn next_due_names_the_earliest_lease_of_another_worker(env: Env) {
    let b = &env.broker;
    env.producer.enqueue(call("{}")).await.unwrap();
    env.producer.enqueue(call("{}")).await.unwrap();
    let mut mine = settle("work", "alive", vec![], 1);
    mine.lease = Duration::from_secs(10);
    assert_eq!(b.settle(mine).await.unwrap().deliveries.len(), 1);
    let mut theirs = settle("work", "dying", vec![], 1);
    theirs.lease = Duration::from_secs(20);
    let before = Utc::now();
    assert_eq!(b.settle(theirs).await.unwrap().deliveries.len(), 1);

    let mut check = settle("work", "alive", vec![], 0);
    check.holds_leases = true;
    let due = b
        .settle(check)
        .await
        .unwrap()
        .next_due
        .expect("the other worker's lease is due");
    let secs = (due - before).num_milliseconds() as f64 / 1000.0;
    assert!(
        (18.0..=21.0).contains(&secs),
        "next due in {secs} s: the other worker's lease (20 s), not ours (10 s)"
    );
}

async fn extended_lease_is_not_redelivered(env: Env) {
    let b = &env.broker;
    env.producer.enqueue(call("{}")).await.unwrap();
    let lease = Duration::from_millis(300);
    let mut req = settle("work", "long", vec![], 1);
    req.lease = lease;
    let d = b.settle(req).await.unwrap().deliveries;
    assert_eq!(d.len(), 1);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let extended = b.extend(&[d[0].lease.clone()], lease).await.unwrap();
        assert_eq!(extended, Default::default());
        let r = b.settle(settle("work", "other", vec![], 1)).await.unwrap();
        assert!(
            r.deliveries.is_empty(),
            "a live lease must not be redelivered"
        );
    }
    let r = b
        .settle(settle("work", "long", vec![success(&d[0], "1")], 0))
        .await
        .unwrap();
    assert!(r.stale.is_empty());
}

async fn retry_then_dead_letter_then_replay(env: Env) {
    let b = &env.broker;
    let e = env.producer.enqueue(call("{}")).await.unwrap();
    let d = fetch(b, 1).await;
    let mut retry = d[0].job.clone();
    retry.state = JobState::Retry;
    retry.attempt = 2;
    retry.error = Some(JobFailure {
        kind: "retry".into(),
        message: "smtp 451".into(),
    });
    let mut revoked = retry.clone();
    revoked.state = JobState::Revoked;
    let due = Utc::now() + chrono::Duration::milliseconds(300);
    let c = Completion {
        lease: d[0].lease.clone(),
        settlement: Settlement::Retry {
            job: retry,
            due,
            if_revoked: revoked,
        },
        had_progress: false,
    };
    let sent = Utc::now();
    let r = b.settle(settle("work", "w", vec![c], 1)).await.unwrap();
    let answered = Utc::now();
    assert!(
        r.deliveries.is_empty(),
        "backoff keeps it in the delayed set"
    );
    // The due time, on this process's clock: Redis keeps it on the
    // server's (the delay from the worker's now, added to TIME), and the
    // reply comes back through the offset the call measured, so it may be
    // late by up to the call's own duration (never early).
    let deferred = r
        .deferred_until
        .expect("a backoff to wait for")
        .timestamp_millis();
    let late = deferred - due.timestamp_millis();
    let call = answered.timestamp_millis() - sent.timestamp_millis();
    assert!(
        (0..=call).contains(&late),
        "{late} ms late, after a {call} ms call"
    );
    let j = b.get(e.job.id).await.unwrap().unwrap();
    assert_eq!((j.state, j.attempt), (JobState::Retry, 2));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let d = fetch(b, 1).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].job.attempt, 2);
    let mut failed = d[0].job.clone();
    failed.state = JobState::Failure;
    failed.error = Some(JobFailure {
        kind: "fail".into(),
        message: "bad address".into(),
    });
    let c = Completion {
        lease: d[0].lease.clone(),
        settlement: Settlement::Finish {
            job: failed,
            dead: true,
        },
        had_progress: false,
    };
    b.settle(settle("work", "w", vec![c], 0)).await.unwrap();
    let dead = b.dead_letters("work", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, e.job.id);
    assert_eq!(dead[0].state, JobState::Failure);
    let stats = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "work")
        .unwrap();
    assert_eq!(stats.dead, 1);

    let replayed = b.replay("work", &[]).await.unwrap();
    assert_eq!(replayed, vec![e.job.id]);
    assert!(b.dead_letters("work", 10).await.unwrap().is_empty());
    let j = b.get(e.job.id).await.unwrap().unwrap();
    assert_eq!((j.state, j.attempt), (JobState::Pending, 1));
    let d = fetch(b, 1).await;
    assert_eq!(d.len(), 1);
}

async fn revoke_queued_running_and_final(env: Env) {
    let b = &env.broker;
    let mut signals = b.signals("w-idle", &["work".to_string()]).await.unwrap();
    assert_eq!(signals.recv().await, Some(Signal::Reconnected));

    let queued = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    assert_eq!(
        b.revoke(queued, false).await.unwrap(),
        RevokeOutcome::Revoked
    );
    assert_eq!(
        b.get(queued).await.unwrap().unwrap().state,
        JobState::Revoked
    );
    let r = b.settle(settle("work", "w", vec![], 10)).await.unwrap();
    assert!(r.deliveries.is_empty(), "a revoked job never runs");

    let running = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let d = fetch(b, 10).await;
    assert_eq!(d.len(), 1);
    assert_eq!(
        b.revoke(running, true).await.unwrap(),
        RevokeOutcome::Terminating
    );
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match signals.recv().await {
                Some(Signal::Revoke { id, terminate }) => break (id, terminate),
                Some(_) => continue,
                None => panic!("signals ended"),
            }
        }
    })
    .await
    .expect("the worker is told to stop the job");
    assert_eq!(got, (running, true));
    // A worker that missed the message learns it from its next extension.
    let extended = b
        .extend(&[d[0].lease.clone()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(extended.revoked, vec![(running, true)]);
    assert!(extended.lost.is_empty());
    // The worker stops it and records REVOKED.
    let mut job = d[0].job.clone();
    job.state = JobState::Revoked;
    b.settle(settle(
        "work",
        "w",
        vec![Completion {
            lease: d[0].lease.clone(),
            settlement: Settlement::Finish { job, dead: false },
            had_progress: false,
        }],
        0,
    ))
    .await
    .unwrap();
    assert_eq!(
        b.get(running).await.unwrap().unwrap().state,
        JobState::Revoked
    );
    assert_eq!(
        b.revoke(running, true).await.unwrap(),
        RevokeOutcome::AlreadyFinal(JobState::Revoked)
    );

    // Revoked without terminate while running: it may finish, never retry.
    let flagged = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let d = fetch(b, 10).await;
    assert_eq!(
        b.revoke(flagged, false).await.unwrap(),
        RevokeOutcome::WillNotRetry
    );
    let extended = b
        .extend(&[d[0].lease.clone()], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(extended.revoked, vec![(flagged, false)]);
    let mut retry = d[0].job.clone();
    retry.state = JobState::Retry;
    let mut revoked = retry.clone();
    revoked.state = JobState::Revoked;
    b.settle(settle(
        "work",
        "w",
        vec![Completion {
            lease: d[0].lease.clone(),
            settlement: Settlement::Retry {
                job: retry,
                due: Utc::now(),
                if_revoked: revoked,
            },
            had_progress: false,
        }],
        0,
    ))
    .await
    .unwrap();
    assert_eq!(
        b.get(flagged).await.unwrap().unwrap().state,
        JobState::Revoked
    );
    assert_eq!(
        b.revoke(runner::queue::JobId::new(), true).await.unwrap(),
        RevokeOutcome::NotFound
    );
}

pub(crate) async fn wait_is_woken_by_the_end(env: Env) {
    let b = env.broker.clone();
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    // Not final yet: a short wait returns the live state.
    let j = b
        .wait(id, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.state, JobState::Pending);
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait(id, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = fetch(&b, 1).await;
    let started = std::time::Instant::now();
    b.settle(settle("work", "w", vec![success(&d[0], "7")], 0))
        .await
        .unwrap();
    let j = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter wakes")
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(j.state, JobState::Success);
    assert_eq!(j.result.as_deref(), Some("7"));
    // Woken by the event, not by the 20 s timeout.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        b.wait(runner::queue::JobId::new(), Duration::from_millis(10))
            .await
            .unwrap()
            .is_none()
    );
}

/// A job given back unrun (`Release`: a worker hands back what it leased
/// ahead, or shuts down) did not start: its start leaves the rate-limit
/// log, or a job handed back and leased again would count twice.
async fn a_job_given_back_unrun_did_not_start(env: Env) {
    let b = &env.broker;
    env.producer
        .enqueue_batch(vec![EnqueueRequest::task("limited", "{}")])
        .await
        .unwrap();
    let usage = [RateLimit {
        key: "task:limited".into(),
        count: 5,
        period_ms: 3_600_000,
    }];
    let r = b.settle(settle("slow", "a", vec![], 1)).await.unwrap();
    assert_eq!(r.deliveries.len(), 1);
    assert_eq!(b.rate_usage("slow", &usage).await.unwrap(), vec![1]);
    let back = given_back(&r.deliveries[0]);
    b.settle(settle("slow", "a", vec![back], 0)).await.unwrap();
    assert_eq!(
        b.rate_usage("slow", &usage).await.unwrap(),
        vec![0],
        "after release"
    );
}

/// A job revoked while leased and then given back unrun (its worker
/// missed the revoke and handed its prefetched jobs back, or stopped) ends
/// REVOKED, as when its lease runs out; before, it went back to the queue
/// and the next worker ran it.
async fn a_revoked_job_given_back_ends_revoked(env: Env) {
    let b = &env.broker;
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let leased = fetch(b, 1).await;
    assert_eq!(leased.len(), 1);
    b.revoke(id, false).await.unwrap();
    let back = given_back(&leased[0]);
    let r = b.settle(settle("work", "w", vec![back], 1)).await.unwrap();
    assert!(r.stale.is_empty());
    assert!(r.deliveries.is_empty(), "{:?}", r.deliveries);
    assert!(fetch(b, 1).await.is_empty());
    let job = b.get(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Revoked);
}

/// A dead letter whose last run was revoked (it failed for good even so)
/// runs again when replayed: that revoke does not reach the new run.
/// Before, on Redis, the new run's lease extension said it was revoked and
/// its retry ended REVOKED; the embedded broker forgot the mark a second
/// later.
async fn a_replayed_dead_letter_is_not_revoked(env: Env) {
    let b = &env.broker;
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let leased = fetch(b, 1).await;
    assert_eq!(leased.len(), 1);
    b.revoke(id, true).await.unwrap();
    settle_dead(b, &leased).await;
    assert_eq!(b.replay("work", &[id]).await.unwrap(), vec![id]);
    let again = fetch(b, 1).await;
    assert_eq!(again.len(), 1);
    let ext = b
        .extend(&[again[0].lease.clone()], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(ext.revoked.is_empty(), "{:?}", ext.revoked);
    let mut job = again[0].job.clone();
    job.state = JobState::Retry;
    let retry = Completion {
        lease: again[0].lease.clone(),
        settlement: Settlement::Retry {
            if_revoked: job.revoked("revoked", Utc::now()),
            job,
            due: Utc::now() + chrono::Duration::seconds(60),
        },
        had_progress: false,
    };
    b.settle(settle("work", "w", vec![retry], 0)).await.unwrap();
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Retry);
}

/// A delayed job revoked before it is due leaves the delayed set at once
/// on both brokers: the queue's counts agree. Before, the embedded broker
/// kept counting it as delayed until its due time.
async fn a_revoked_delayed_job_is_no_longer_counted(env: Env) {
    let b = &env.broker;
    let mut req = call("{}");
    req.countdown_secs = Some(600.0);
    let id = env.producer.enqueue(req).await.unwrap().job.id;
    let delayed = |stats: Vec<runner::queue::QueueStats>| {
        stats
            .iter()
            .find(|q| q.name == "work")
            .map_or(0, |q| q.delayed)
    };
    assert_eq!(delayed(b.queues().await.unwrap()), 1);
    b.revoke(id, false).await.unwrap();
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Revoked);
    assert_eq!(delayed(b.queues().await.unwrap()), 0);
}

/// A job held back by one of its limits (its task's, for hours) leaves
/// the others (its queue's) as they were: the queue's other jobs wait for
/// the queue's limit alone, not behind the task's backlog.
async fn one_limits_backlog_does_not_hold_back_another(env: Env) {
    let b = &env.broker;
    let rule = |key: &str, spec: &str| RateLimit::parse(key, spec).unwrap();
    let job = |task: &str, rules: Vec<RateLimit>| {
        let mut j = Job::new("work", "{}", Utc::now());
        j.task = Some(task.into());
        j.rate_limits = rules;
        j
    };
    let own = rule("task:slow", "1/h");
    let queue = rule("queue:work", "2/h");
    let jobs = vec![
        job("slow", vec![own.clone(), queue.clone()]),
        job("slow", vec![own, queue.clone()]),
        job("fast", vec![queue.clone()]),
        job("fast", vec![queue]),
    ];
    let fast = jobs[3].id;
    b.enqueue(jobs).await.unwrap();
    // (On Redis the first call learns which logs to declare.)
    let mut started = 0;
    for _ in 0..3 {
        started += fetch(b, 4).await.len();
    }
    assert_eq!(started, 2, "the first of each task");
    let due = b
        .scheduled("work", 10)
        .await
        .unwrap()
        .into_iter()
        .find(|(_, j)| j.id == fast)
        .expect("the second fast job waits")
        .0;
    // The queue's limit frees a start an hour after the first; the slow
    // task's next start is an hour away too, but its backlog's place in
    // line (its tail) is not the queue's.
    assert!(
        due <= Utc::now() + chrono::Duration::minutes(61),
        "the fast job waits until {due}"
    );
}

/// A job leased past its expiry does not run (its worker ends it EXPIRED
/// at once), so it takes no rate-limit start and waits for none: a
/// backlog that expired does not hold back the jobs that come after it.
/// Before, each took a start, or a deferral at the limit's rate.
async fn expired_jobs_take_no_rate_limit_starts(env: Env) {
    let b = &env.broker;
    let rule = RateLimit::parse("queue:work", "2/h").unwrap();
    let job = |expires: Option<chrono::DateTime<Utc>>| {
        let mut j = Job::new("work", "{}", Utc::now());
        j.task = Some("notify".into());
        j.rate_limits = vec![rule.clone()];
        j.expires = expires;
        j
    };
    let soon = Utc::now() + chrono::Duration::milliseconds(30);
    b.enqueue((0..3).map(|_| job(Some(soon))).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let expired = fetch(b, 10).await;
    assert_eq!(expired.len(), 3, "leased at once, for their worker to end");
    assert!(expired.iter().all(|d| d.job.is_expired_at(d.leased_at)));
    let usage = b
        .rate_usage("work", std::slice::from_ref(&rule))
        .await
        .unwrap();
    assert_eq!(usage, [0]);
    // Fresh jobs start at the limit's rate as if nothing came before.
    b.enqueue((0..2).map(|_| job(None)).collect())
        .await
        .unwrap();
    let mut started = 0;
    for _ in 0..3 {
        started += fetch(b, 10).await.len();
    }
    assert_eq!(started, 2);
}

async fn rate_limit_is_global_and_exact(env: Env) {
    let b = &env.broker;
    let reqs: Vec<_> = (0..12)
        .map(|_| EnqueueRequest::task("limited", "{}"))
        .collect();
    env.producer.enqueue_batch(reqs).await.unwrap();
    let mut starts = Vec::new();
    // What a limit counts: the starts in its log (read over an hour here,
    // so that a slow machine cannot see the 1 s window pass).
    let usage = |key: &str| RateLimit {
        key: key.into(),
        count: 5,
        period_ms: 3_600_000,
    };
    let limits = [usage("task:limited"), usage("task:other")];
    assert_eq!(b.rate_usage("slow", &limits).await.unwrap(), vec![0, 0]);
    let r = b.settle(settle("slow", "a", vec![], 3)).await.unwrap();
    assert_eq!(r.deliveries.len(), 3);
    assert_eq!(b.rate_usage("slow", &limits).await.unwrap(), vec![3, 0]);
    assert_eq!(b.rate_usage("work", &limits).await.unwrap(), vec![0, 0]);
    let mut done = Vec::new();
    for d in &r.deliveries {
        starts.push(d.leased_at.timestamp_millis());
        done.push(success(d, "1"));
    }
    b.settle(settle("slow", "a", done, 0)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Two "workers" alternate; each settles immediately.
    let mut turn = 0;
    while starts.len() < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "limited jobs must all start eventually"
        );
        let w = if turn % 2 == 0 { "a" } else { "b" };
        turn += 1;
        let r = b.settle(settle("slow", w, vec![], 3)).await.unwrap();
        let mut done = Vec::new();
        for d in &r.deliveries {
            starts.push(d.leased_at.timestamp_millis());
            done.push(success(d, "1"));
        }
        b.settle(settle("slow", w, done, 0)).await.unwrap();
        let wait = r
            .deferred_until
            .or(r.next_due)
            .map(|t| (t - Utc::now()).num_milliseconds().clamp(1, 1000) as u64)
            .unwrap_or(20);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    starts.sort();
    for (i, &s) in starts.iter().enumerate() {
        let n = starts[i..].iter().take_while(|&&t| t < s + 1000).count();
        assert!(n <= 5, "{n} starts in the 1 s window from {s}: {starts:?}");
    }
    let s = b
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.name == "slow")
        .unwrap();
    assert_eq!(
        (s.ready, s.delayed, s.in_flight),
        (0, 0, 0),
        "nothing dropped or left behind"
    );
}

async fn signals_announce_work_and_delays(env: Env) {
    let b = &env.broker;
    let mut s = b.signals("w-idle", &["work".to_string()]).await.unwrap();
    assert_eq!(s.recv().await, Some(Signal::Reconnected));
    env.producer.enqueue(call("{}")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .unwrap();
    assert_eq!(
        got,
        Some(Signal::Work {
            queue: "work".into()
        })
    );
    let mut req = call("{}");
    req.countdown_secs = Some(30.0);
    let sent = std::time::Instant::now();
    let e = env.producer.enqueue(req).await.unwrap();
    // The job's eta is the producer's clock plus the countdown; Redis takes
    // the due time from its own clock (one clock for every worker), so the
    // two differ by when, within this call, the server read its clock,
    // plus the truncation to ms on each side. The embedded broker has one
    // clock: exactly the eta.
    let call_ms = sent.elapsed().as_millis() as i64 + 1;
    let got = tokio::time::timeout(Duration::from_secs(5), s.recv())
        .await
        .unwrap();
    match got {
        Some(Signal::WakeAt { queue, at }) => {
            assert_eq!(queue, "work");
            let eta = e.job.eta.unwrap().timestamp_millis();
            let off = at.timestamp_millis() - eta;
            if b.kind() == "embedded" {
                assert_eq!(off, 0);
            } else {
                assert!(
                    off.abs() <= call_ms,
                    "due {off} ms from the eta ({call_ms} ms call)"
                );
            }
        }
        other => panic!("expected WakeAt, got {other:?}"),
    }
}

/// The longest expiry and a long result TTL, each allowed on its own, are
/// stored together: the record is kept a result-TTL past the expiry,
/// capped at the longest TTL (Redis's enqueue refused their sum before, so
/// the API answered 500 to a valid job).
async fn the_longest_expiry_with_a_long_result_ttl_is_stored(env: Env) {
    let mut r = call("{}");
    r.expires_in_secs = Some(runner::producer::MAX_DELAY_SECS - 60.0);
    r.result_ttl_secs = Some(3_000_000_000);
    let far = env.producer.enqueue(r).await.unwrap();
    let stored = env.broker.get(far.job.id).await.unwrap().unwrap();
    assert_eq!(stored.state, JobState::Pending);
    assert_eq!(stored.result_ttl_ms, 3_000_000_000_000);
    assert!(stored.expires.is_some());
}

async fn bad_input_enqueues_nothing(env: Env) {
    let p = &env.producer;
    let err = p
        .enqueue(EnqueueRequest::task("nope", "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnqueueError::Invalid(JobError::UnknownTask(ref t)) if t == "nope"),
        "{err}"
    );
    assert!(err.to_string().contains("unknown task \"nope\""));

    let err = p.enqueue(call("{\"a\": ")).await.unwrap_err();
    match err {
        EnqueueError::Invalid(JobError::InvalidJson { line, column, .. }) => {
            assert_eq!((line, column), (1, 6))
        }
        other => panic!("{other}"),
    }

    // The enqueue script's mark of a workflow's step.
    let mut r = call("{}");
    r.idempotency_key = Some("=".into());
    let err = p.enqueue(r).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid idempotency key: \"=\" is reserved",
        "{err}"
    );

    let mut r = call("{}");
    r.countdown_secs = Some(-5.0);
    let err = p.enqueue(r).await.unwrap_err();
    assert!(
        matches!(err, EnqueueError::Invalid(JobError::NegativeCountdown(_))),
        "{err}"
    );

    let mut r = call("{}");
    r.expires = Some(Utc::now() - chrono::Duration::seconds(10));
    let err = p.enqueue(r).await.unwrap_err();
    assert!(
        matches!(err, EnqueueError::Invalid(JobError::ExpiryInPast { .. })),
        "{err}"
    );
    assert!(err.to_string().starts_with("expires: "), "{err}");
    assert!(err.to_string().contains("in the past"));

    // Numbers past any date are refused by name, never an overflow (they
    // panicked the producer before).
    for (countdown, expires_in) in [(Some(1e300), None), (Some(4e9), None), (None, Some(1e300))] {
        let mut r = call("{}");
        r.countdown_secs = countdown;
        r.expires_in_secs = expires_in;
        let err = p.enqueue(r).await.unwrap_err();
        let field = if countdown.is_some() {
            "countdown"
        } else {
            "expires_in"
        };
        assert!(
            matches!(&err, EnqueueError::Invalid(JobError::OutOfRange { field: f, .. }) if *f == field),
            "{err}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }

    // Two ways to give one time: refused, not one silently ignored.
    let soon = Utc::now() + chrono::Duration::seconds(60);
    let mut r = call("{}");
    r.eta = Some(soon);
    r.countdown_secs = Some(5.0);
    let err = p.enqueue(r).await.unwrap_err();
    assert!(
        matches!(
            err,
            EnqueueError::Invalid(JobError::Both {
                field: "countdown",
                other: "eta"
            })
        ),
        "{err}"
    );
    let mut r = call("{}");
    r.expires = Some(soon);
    r.expires_in_secs = Some(5.0);
    let err = p.enqueue(r).await.unwrap_err();
    assert!(err.to_string().contains("expires_in and expires"), "{err}");

    let mut r = call("{}");
    r.queue = Some("my queue".into());
    let err = p.enqueue(r).await.unwrap_err();
    assert!(
        matches!(err, EnqueueError::Invalid(JobError::InvalidQueue { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("spaces are not allowed"), "{err}");

    // One bad job spoils the batch: nothing of it is stored.
    let err = p
        .enqueue_batch(vec![call("{}"), call("{}"), call("not json")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnqueueError::InBatch { index: 2, .. }),
        "{err}"
    );

    assert_eq!(
        crate::support::jobs_not_final(env.broker.as_ref()).await,
        0,
        "bad input must enqueue nothing"
    );
}

async fn progress_is_stored_and_published(env: Env) {
    let b = &env.broker;
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let mut events = b.subscribe().await.unwrap();
    let d = fetch(b, 1).await;
    let p = runner::queue::Progress {
        done: 3,
        total: 62,
        message: Some("batch 1".into()),
    };
    b.progress(&d[0].lease, &p).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.id == id && ev.progress.is_some() {
                break ev;
            }
        }
    })
    .await
    .expect("a progress event");
    assert_eq!(got.progress, Some(p.clone()));
    assert_eq!(b.get(id).await.unwrap().unwrap().progress, Some(p));
}

async fn workers_are_listed_by_heartbeat(env: Env) {
    let b = &env.broker;
    let w = runner::queue::WorkerInfo {
        id: "w-1".into(),
        hostname: "h".into(),
        pid: 1,
        queues: vec!["work".into()],
        concurrency: 4,
        started_at: Utc::now(),
        last_seen: Utc::now(),
        running: vec![],
        processed: 0,
        failed: 0,
    };
    b.heartbeat(&w, Duration::from_secs(60)).await.unwrap();
    let ws = b.workers().await.unwrap();
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].id, "w-1");
    b.worker_gone("w-1").await.unwrap();
    assert!(b.workers().await.unwrap().is_empty());
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::embedded().await).await;
                }
            )*
        }
        mod redis_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::redis().await).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::cluster().await).await;
                }
            )*
        }
    };
}

conformance!(
    enqueue_lease_and_succeed,
    idempotency_key_returns_first_job,
    a_workflow_step_is_stored_once_by_its_id,
    a_workflow_step_that_expires_unrun_is_kept_for_its_end,
    countdown_waits_in_the_broker,
    expired_lease_is_redelivered_and_late_settlement_is_stale,
    next_due_names_the_earliest_lease_of_another_worker,
    extended_lease_is_not_redelivered,
    retry_then_dead_letter_then_replay,
    concurrent_replays_queue_a_dead_letter_once,
    replay_all_takes_the_letters_dead_when_it_began,
    revoke_queued_running_and_final,
    wait_is_woken_by_the_end,
    rate_limit_is_global_and_exact,
    thousands_of_jobs_lease_and_end_in_one_call,
    expired_jobs_take_no_rate_limit_starts,
    one_limits_backlog_does_not_hold_back_another,
    a_job_given_back_unrun_did_not_start,
    a_revoked_job_given_back_ends_revoked,
    a_replayed_dead_letter_is_not_revoked,
    a_revoked_delayed_job_is_no_longer_counted,
    signals_announce_work_and_delays,
    bad_input_enqueues_nothing,
    the_longest_expiry_with_a_long_result_ttl_is_stored,
    progress_is_stored_and_published,
    workers_are_listed_by_heartbeat,
    a_job_waiting_past_its_expiry_shows_expired,
    a_running_job_keeps_its_record_past_its_expiry,
    a_job_back_from_its_worker_expires_again,
    a_worker_named_by_a_number_wakes_for_the_others_leases,
    purge_ends_waiting_jobs_and_leaves_running_ones,
    purge_pages_through_long_queues,
    scheduled_lists_delayed_jobs_soonest_first,
    list_finds_jobs_newest_first_by_any_filter,
    list_forgets_jobs_whose_records_expired,
    priorities_lease_higher_first,
    history_counts_every_change_by_the_minute,
    a_job_back_from_a_worker_keeps_its_priority,
    an_idle_worker_is_pushed_the_next_jobs,
    only_plain_jobs_with_nothing_before_them_are_pushed,
    a_job_pushed_to_a_worker_that_died_runs_elsewhere,
    an_end_event_carries_the_final_record,
    a_worker_whose_push_is_on_its_way_leases_nothing_more,
);

/// A worker's call that comes after a push used its registration up, but
/// before the push reached it, leases nothing and says so: the pushed jobs
/// are older and come first, and the worker never holds more than it
/// registered for plus what it asks for once they arrived.
async fn a_worker_whose_push_is_on_its_way_leases_nothing_more(env: Env) {
    let b = &env.broker;
    if !register_idle(&env, "w-idle", 2, Duration::from_secs(30)).await {
        return;
    }
    let ids: Vec<JobId> = env
        .producer
        .enqueue_batch((0..4).map(|_| call("{}")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    // The worker has not heard the push yet: it believes it is registered.
    let mut req = settle("work", "w-idle", vec![], 4);
    req.idle = 2;
    req.registered = true;
    let r = b.settle(req).await.unwrap();
    assert!(r.push_in_flight);
    assert!(r.deliveries.is_empty(), "{:?}", r.deliveries.len());
    assert!(!r.registered());
    // The jobs behind the pushed ones still wait, in order, for anyone.
    let r = b.settle(settle("work", "w-2", vec![], 4)).await.unwrap();
    assert_eq!(
        r.deliveries.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        ids[2..]
    );
    // The marker is gone with that call: the next one leases as usual.
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let mut req = settle("work", "w-idle", vec![], 4);
    req.registered = true;
    let r = b.settle(req).await.unwrap();
    assert!(!r.push_in_flight);
    assert_eq!(r.deliveries[0].job.id, id);
    // A call that leases jobs and finds the queue empty registers the
    // rest of its free slots, and says how many: its worker keeps what
    // all its registrations offer within what it can take.
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let mut req = settle("work", "w-3", vec![], 5);
    req.idle = 3;
    let r = b.settle(req).await.unwrap();
    assert_eq!(
        r.deliveries.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        [id]
    );
    assert_eq!((r.registered(), r.offered), (true, 2));
}

/// A job that expires unrun is forgotten a result-TTL after its expiry if
/// no worker took it by then. A workflow's step is kept until a worker
/// takes it and ends it EXPIRED: that end fails its workflow, which would
/// otherwise wait for the step for good.
async fn a_workflow_step_that_expires_unrun_is_kept_for_its_end(env: Env) {
    let b = &env.broker;
    let soon = Utc::now() + chrono::Duration::milliseconds(20);
    let job = |step: bool| {
        let mut j = Job::new("work", "{}", Utc::now());
        j.task = Some("echo".into());
        j.expires = Some(soon);
        j.result_ttl_ms = 1;
        if step {
            j.workflow = Some(runner::queue::job::WorkflowRef {
                id: JobId::new(),
                path: "workflow".into(),
            });
        }
        j
    };
    let (plain, step) = (job(false), job(true));
    b.enqueue(vec![plain, step.clone()]).await.unwrap();
    // Past the expiry and the TTL (and the embedded broker's sweep).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    b.settle(settle("work", "w", vec![], 0)).await.unwrap();
    let r = b.settle(settle("work", "w", vec![], 10)).await.unwrap();
    let ids: Vec<JobId> = r.deliveries.iter().map(|d| d.job.id).collect();
    assert_eq!(ids, [step.id], "only the step is left, for a worker to end");
}

/// On Redis a job's end event carries its final record (up to
/// `EVENT_RECORD_MAX` bytes) when this process waits for that job, so that
/// the waiter needs no read; a larger one is left out and read. Records
/// nobody wants stay out of the event feed, whose ring a quiet receiver
/// holds. The embedded broker's waiters read memory.
async fn an_end_event_carries_the_final_record(env: Env) {
    let b = &env.broker;
    let mut events = b.subscribe().await.unwrap();
    let small = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let big = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let unwanted = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let wants = [b.want_record(Some(small)), b.want_record(Some(big))];
    let r = b.settle(settle("work", "w", vec![], 3)).await.unwrap();
    let large = format!("\"{}\"", "x".repeat(runner::queue::EVENT_RECORD_MAX));
    let output = |id| {
        if id == big {
            large.as_str()
        } else {
            "{\"ok\":1}"
        }
    };
    let done = r
        .deliveries
        .iter()
        .map(|d| success(d, output(d.job.id)))
        .collect();
    b.settle(settle("work", "w", done, 0)).await.unwrap();
    let mut records = std::collections::HashMap::new();
    while records.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.state.is_final() {
            records.insert(ev.id, ev.record);
        }
    }
    if b.kind() == "embedded" {
        assert!(records.values().all(Option::is_none));
    } else {
        let rec = records[&small]
            .as_ref()
            .expect("the small record came with its end");
        assert_eq!(
            Job::from_json(rec).unwrap(),
            b.get(small).await.unwrap().unwrap()
        );
        assert!(
            records[&big].is_none(),
            "a record over the cap is read, not sent"
        );
        assert!(
            records[&unwanted].is_none(),
            "a record nobody waits for stays out of the feed"
        );
    }
    // Once nobody wants it, a record stays out too.
    drop(wants);
    let again = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let r = b.settle(settle("work", "w", vec![], 1)).await.unwrap();
    let done = vec![success(&r.deliveries[0], "{\"ok\":1}")];
    b.settle(settle("work", "w", done, 0)).await.unwrap();
    let ev = loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.id == again && ev.state.is_final() {
            break ev;
        }
    };
    assert!(ev.record.is_none());
    for id in [small, big, unwanted, again] {
        assert_eq!(
            b.wait(id, Duration::from_secs(1))
                .await
                .unwrap()
                .unwrap()
                .state,
            JobState::Success
        );
    }
}

/// The next signal that is not another worker's lease deadline.
async fn next_signal(s: &mut tokio::sync::mpsc::UnboundedReceiver<Signal>) -> Signal {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.recv()).await {
            Ok(Some(Signal::LeaseUntil { .. })) => continue,
            Ok(Some(sig)) => return sig,
            other => panic!("no signal: {other:?}"),
        }
    }
}

/// What worker `w` leases from `work`: up to `n` jobs.
async fn fetch(b: &Arc<dyn Broker>, n: usize) -> Vec<runner::queue::Delivery> {
    b.settle(settle("work", "w", vec![], n))
        .await
        .unwrap()
        .deliveries
}

/// Registers worker `w` as idle in `work` with `slots` free slots (a fetch
/// that finds the queue empty); whether the broker registered it.
async fn register_idle(env: &Env, w: &str, slots: usize, lease: Duration) -> bool {
    let mut req = settle("work", w, vec![], slots);
    req.idle = slots;
    req.lease = lease;
    let r = env.broker.settle(req).await.unwrap();
    assert!(r.deliveries.is_empty());
    assert_eq!(r.offered, if r.registered() { slots } else { 0 });
    r.registered()
}

/// A worker whose fetch finds the queue empty registers its free slots as
/// idle; the next enqueue leases its first jobs straight to that worker and
/// publishes them with the wake-up, so the worker needs no lease call. The
/// registration is used up by the push. Redis only: the embedded broker
/// wakes its workers in-process and registers nobody.
async fn an_idle_worker_is_pushed_the_next_jobs(env: Env) {
    let b = &env.broker;
    let mut s = b.signals("w-idle", &["work".to_string()]).await.unwrap();
    assert_eq!(s.recv().await, Some(Signal::Reconnected));
    // Another worker of the queue hears of the work, not of the push.
    let mut other = b.signals("w-other", &["work".to_string()]).await.unwrap();
    assert_eq!(other.recv().await, Some(Signal::Reconnected));
    let pushes = b.kind() != "embedded";
    assert_eq!(
        register_idle(&env, "w-idle", 2, Duration::from_secs(30)).await,
        pushes
    );
    let ids: Vec<JobId> = env
        .producer
        .enqueue_batch((0..3).map(|i| call(&format!("{{\"n\":{i}}}"))).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    let work = Signal::Work {
        queue: "work".into(),
    };
    if !pushes {
        assert_eq!(next_signal(&mut s).await, work);
        return;
    }
    // Two pushed (the registered slots), in order; the third waits.
    let pushed = match next_signal(&mut s).await {
        Signal::Pushed {
            queue,
            worker,
            deliveries,
        } => {
            assert_eq!((queue.as_str(), worker.as_str()), ("work", "w-idle"));
            deliveries
        }
        other => panic!("expected a push, got {other:?}"),
    };
    assert_eq!(
        pushed.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        ids[..2]
    );
    assert!(pushed.iter().all(|d| d.job.state == JobState::Started));
    assert_eq!(next_signal(&mut s).await, work);
    assert_eq!(next_signal(&mut other).await, work);
    // The pushed jobs are leased: shown started, never leased again.
    assert_eq!(
        b.get(ids[0]).await.unwrap().unwrap().state,
        JobState::Started
    );
    let r = b.settle(settle("work", "w-2", vec![], 10)).await.unwrap();
    assert_eq!(
        r.deliveries.iter().map(|d| d.job.id).collect::<Vec<_>>(),
        ids[2..]
    );
    // Their leases are the worker's: its results are stored, none stale.
    let done: Vec<Completion> = pushed.iter().map(|d| success(d, "1")).collect();
    let r = b.settle(settle("work", "w-idle", done, 0)).await.unwrap();
    assert!(r.stale.is_empty(), "{:?}", r.stale);
    for id in &ids[..2] {
        assert_eq!(b.get(*id).await.unwrap().unwrap().state, JobState::Success);
    }
    // The push used the registration up: the next job waits for a lease.
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    assert_eq!(next_signal(&mut s).await, work);
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Pending);
}

/// Pushes keep the queue's order and priorities: a job is pushed only when
/// nothing waits before it, and a job with a priority is never pushed. A
/// worker's call that finds work ends its registration.
async fn only_plain_jobs_with_nothing_before_them_are_pushed(env: Env) {
    let b = &env.broker;
    if b.kind() == "embedded" {
        return;
    }
    let mut s = b.signals("w-idle", &["work".to_string()]).await.unwrap();
    assert_eq!(s.recv().await, Some(Signal::Reconnected));
    assert!(register_idle(&env, "w-idle", 4, Duration::from_secs(30)).await);
    let high = enqueue_at(&env, Some(5)).await;
    assert_eq!(
        next_signal(&mut s).await,
        Signal::Work {
            queue: "work".into()
        }
    );
    assert_eq!(
        next_signal(&mut s).await,
        Signal::Prioritized {
            queue: "work".into()
        }
    );
    // A plain job behind a prioritized one waits too.
    let plain = enqueue_at(&env, None).await;
    assert_eq!(
        next_signal(&mut s).await,
        Signal::Work {
            queue: "work".into()
        }
    );
    for id in [high, plain] {
        assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Pending);
    }
    // The worker leases them; its call ends the registration.
    let mut req = settle("work", "w-idle", vec![], 1);
    req.registered = true;
    let r = b.settle(req).await.unwrap();
    assert_eq!(r.deliveries[0].job.id, high);
    assert!(!r.registered());
    let r = b.settle(settle("work", "w-2", vec![], 1)).await.unwrap();
    assert_eq!(r.deliveries[0].job.id, plain);
    let next = enqueue_at(&env, None).await;
    assert_eq!(
        next_signal(&mut s).await,
        Signal::Work {
            queue: "work".into()
        }
    );
    assert_eq!(b.get(next).await.unwrap().unwrap().state, JobState::Pending);
}

/// A worker that dies while registered as idle holds what is pushed to it
/// only until the lease it registered with runs out: then the job is taken
/// back and runs elsewhere.
async fn a_job_pushed_to_a_worker_that_died_runs_elsewhere(env: Env) {
    let b = &env.broker;
    let pushes = register_idle(&env, "w-dead", 1, Duration::from_millis(300)).await;
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    if pushes {
        assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Started);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let r = b.settle(settle("work", "w-2", vec![], 1)).await.unwrap();
    assert_eq!(r.deliveries.len(), 1);
    let d = &r.deliveries[0];
    assert_eq!(d.job.id, id);
    assert_eq!(
        (r.reclaimed, d.lease.redeliveries),
        if pushes { (1, 1) } else { (0, 0) }
    );
    b.settle(settle("work", "w-2", vec![success(d, "1")], 0))
        .await
        .unwrap();
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Success);
}

/// Enqueues an `echo` job of priority `p` (none: the default).
async fn enqueue_at(env: &Env, p: Option<u64>) -> JobId {
    let mut r = call("{}");
    r.priority = p;
    env.producer.enqueue(r).await.unwrap().job.id
}

/// A job handed back by its worker (a prefetch hand-back, a shutdown) or
/// taken back from a lost worker goes back first among the jobs of its
/// priority, not behind them nor among priority 0.
async fn a_job_back_from_a_worker_keeps_its_priority(env: Env) {
    let b = &env.broker;
    let enqueue = |p: Option<u64>| enqueue_at(&env, p);
    let low = enqueue(None).await;
    let first = enqueue(Some(5)).await;
    let second = enqueue(Some(5)).await;
    let ids = |r: &runner::queue::SettleReply| -> Vec<JobId> {
        r.deliveries.iter().map(|d| d.job.id).collect()
    };
    // Handed back.
    let r = b.settle(settle("work", "w", vec![], 1)).await.unwrap();
    assert_eq!(ids(&r), [first]);
    let back = given_back(&r.deliveries[0]);
    b.settle(settle("work", "w", vec![back], 0)).await.unwrap();
    let mut req = settle("work", "w2", vec![], 3);
    req.lease = Duration::from_millis(100);
    let r = b.settle(req).await.unwrap();
    assert_eq!(ids(&r), [first, second, low], "after a hand-back");
    // Taken back from a worker whose leases ran out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = b.settle(settle("work", "w3", vec![], 3)).await.unwrap();
    assert_eq!(r.reclaimed, 3);
    let got = ids(&r);
    assert_eq!(got[2], low, "priority 0 last: {got:?}");
    let mut high = got[..2].to_vec();
    high.sort();
    let mut want = vec![first, second];
    want.sort();
    assert_eq!(high, want, "the priority-5 jobs first: {got:?}");
}

/// A queue's last hour, minute by minute, as the API shows it (the
/// current minute ends with the depth now).
async fn hour(b: &Arc<dyn Broker>, queue: &str) -> Vec<runner::queue::history::HistoryPoint> {
    let mut h = b.history(&[queue.to_string()]).await.unwrap();
    assert_eq!(h.len(), 1);
    let now = b
        .queues()
        .await
        .unwrap()
        .iter()
        .find(|q| q.name == queue)
        .map_or((0, 0), |q| q.depth());
    h.remove(0).points(Utc::now(), Some(now))
}

fn totals(h: &[runner::queue::history::HistoryPoint]) -> [u64; 5] {
    let mut t = [0; 5];
    for p in h {
        for (i, n) in [p.enqueued, p.succeeded, p.failed, p.retried, p.revoked]
            .into_iter()
            .enumerate()
        {
            t[i] += n;
        }
    }
    t
}

/// Every change of a queue is counted in its history as it happens (by the
/// code that makes it: no worker heartbeat needed), and the depth after the
/// last change is the last minute's.
async fn history_counts_every_change_by_the_minute(env: Env) {
    let b = &env.broker;
    // Nothing happened: nothing counted; the depth now held all along.
    let h = hour(b, "work").await;
    assert_eq!(h.len(), 60);
    assert_eq!(totals(&h), [0; 5]);
    assert!(h.iter().all(|p| p.waiting == Some(0)), "{h:?}");

    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(env.producer.enqueue(call("{}")).await.unwrap().job.id);
    }
    let last = |h: &[runner::queue::history::HistoryPoint]| {
        let p = h.last().unwrap();
        (p.waiting, p.running)
    };
    let h = hour(b, "work").await;
    assert_eq!(totals(&h), [4, 0, 0, 0, 0]);
    assert_eq!(last(&h), (Some(4), Some(0)));

    // Two start; one succeeds, one is retried later; one is revoked.
    let d = fetch(b, 2).await;
    assert_eq!(d.len(), 2);
    assert_eq!(last(&hour(b, "work").await), (Some(2), Some(2)));
    let mut retry = d[1].job.clone();
    retry.state = JobState::Retry;
    let mut revoked = retry.clone();
    revoked.state = JobState::Revoked;
    let again = Completion {
        lease: d[1].lease.clone(),
        settlement: Settlement::Retry {
            job: retry,
            due: Utc::now() + chrono::Duration::hours(1),
            if_revoked: revoked,
        },
        had_progress: false,
    };
    b.settle(settle("work", "w", vec![success(&d[0], "1"), again], 0))
        .await
        .unwrap();
    assert_eq!(
        b.revoke(ids[3], false).await.unwrap(),
        RevokeOutcome::Revoked
    );
    let h = hour(b, "work").await;
    assert_eq!(totals(&h), [4, 1, 0, 1, 1]);
    // Waiting: one ready (the revoked one's entry is skipped when popped,
    // and counts as waiting until then, as in `queues`), one delayed.
    let stats = b.queues().await.unwrap();
    let work = stats.iter().find(|q| q.name == "work").unwrap();
    assert_eq!(
        last(&h),
        (Some(work.ready + work.delayed), Some(work.in_flight))
    );
    assert_eq!(work.in_flight, 0);

    // The third fails for good (the revoked one is dropped as it is popped).
    let d = fetch(b, 2).await;
    assert_eq!(d.len(), 1);
    b.settle(settle("work", "w", vec![dead_letter(&d[0])], 0))
        .await
        .unwrap();
    let h = hour(b, "work").await;
    assert_eq!(totals(&h), [4, 1, 1, 1, 1]);
    assert_eq!(last(&h), (Some(1), Some(0)), "the retried one waits");
    // Another queue's history is its own.
    assert_eq!(totals(&hour(b, "slow").await), [0; 5]);
}

/// Ready jobs are leased highest priority first (9 before 5 before the
/// default 0), in order within a priority, strictly: low ones wait while
/// higher ones are ready. A delayed job and a retried one keep their
/// priority when they come due; a purge takes prioritized jobs too; a
/// fetch that does not ask for prioritized jobs reads only the default
/// list; a priority above 9 is refused by name.
async fn priorities_lease_higher_first(env: Env) {
    let b = &env.broker;
    let enqueue = |p: Option<u64>| enqueue_at(&env, p);
    let mut low = vec![enqueue(None).await, enqueue(Some(0)).await];
    let mid = [enqueue(Some(5)).await, enqueue(Some(5)).await];
    let high = [enqueue(Some(9)).await, enqueue(Some(9)).await];
    low.push(enqueue(None).await);
    let mut later = call("{}");
    later.priority = Some(9);
    later.countdown_secs = Some(0.3);
    let later = env.producer.enqueue(later).await.unwrap().job.id;
    let mut bad = call("{}");
    bad.priority = Some(10);
    let e = env.producer.enqueue(bad).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("priority is 10, above its maximum of 9"),
        "{e}"
    );
    let stats = b.queues().await.unwrap();
    assert_eq!(depth(&stats, "work"), (7, 1, 0));

    let leased = |r: &runner::queue::SettleReply| -> Vec<JobId> {
        r.deliveries.iter().map(|d| d.job.id).collect()
    };
    let r = b.settle(settle("work", "w", vec![], 3)).await.unwrap();
    assert_eq!(leased(&r), [high[0], high[1], mid[0]]);
    assert!(r.prioritized_left, "the fetch took as many as it asked for");
    assert_eq!(r.deliveries[0].job.priority, 9);
    let r = b.settle(settle("work", "w", vec![], 10)).await.unwrap();
    assert_eq!(leased(&r), [vec![mid[1]], low.clone()].concat());
    assert!(!r.prioritized_left);

    // Due, the delayed one goes before the default list.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let waiting = enqueue(None).await;
    let r = b.settle(settle("work", "w", vec![], 1)).await.unwrap();
    assert_eq!(leased(&r), [later]);
    // A retry keeps its priority.
    let d = &r.deliveries[0];
    let mut retry = d.job.clone();
    retry.state = JobState::Retry;
    retry.attempt += 1;
    let revoked = d.job.revoked("x", Utc::now());
    let c = Completion {
        lease: d.lease.clone(),
        settlement: Settlement::Retry {
            job: retry,
            due: Utc::now() + chrono::Duration::milliseconds(200),
            if_revoked: revoked,
        },
        had_progress: false,
    };
    b.settle(settle("work", "w", vec![c], 0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = b.settle(settle("work", "w", vec![], 1)).await.unwrap();
    assert_eq!(leased(&r), [later], "the retry before the default list");

    // Without `prioritized`, the fetch reads only the default list.
    let urgent = enqueue(Some(3)).await;
    let mut plain = settle("work", "w", vec![], 1);
    plain.prioritized = false;
    let r = b.settle(plain).await.unwrap();
    assert_eq!(leased(&r), [waiting]);
    assert!(!r.prioritized_left);
    let purged = b.purge("work", &PurgeFilter::default()).await.unwrap();
    assert_eq!(purged, [urgent]);
    assert_eq!(
        b.get(urgent).await.unwrap().unwrap().state,
        JobState::Revoked
    );
    assert_eq!(depth(&b.queues().await.unwrap(), "work").0, 0);
}

/// Every page of `query` from its cursor on, concatenated.
async fn list_all(b: &Arc<dyn Broker>, mut query: JobQuery) -> Vec<Job> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let page = b.list(&query).await.unwrap();
        assert!(page.jobs.len() <= query.limit);
        out.extend(page.jobs);
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return out,
        }
    }
    panic!("more than 100 pages");
}

fn ids_of(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

fn newest_first(mut ids: Vec<JobId>) -> Vec<JobId> {
    ids.sort_by(|a, b| b.cmp(a));
    ids
}

fn query(limit: usize) -> JobQuery {
    JobQuery {
        limit,
        ..JobQuery::default()
    }
}

/// `list` finds jobs of every queue newest first, a page at a time, and
/// by queue, task, state (live ones as a lookup shows them, ended ones
/// from their own index), time range, parent and beat.
async fn list_finds_jobs_newest_first_by_any_filter(env: Env) {
    let b = &env.broker;
    let mut echo = Vec::new();
    for i in 0..5 {
        echo.push(
            env.producer
                .enqueue(call(&format!("{i}")))
                .await
                .unwrap()
                .job
                .id,
        );
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let middle = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut other = Vec::new();
    for _ in 0..3 {
        let mut req = EnqueueRequest::task("other", "{}");
        req.parent = Some(echo[0]);
        other.push(env.producer.enqueue(req).await.unwrap().job.id);
    }
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut req = EnqueueRequest::task("limited", "{}");
        req.schedule = Some("nightly".into());
        slow.push(env.producer.enqueue(req).await.unwrap().job.id);
    }
    let all: Vec<JobId> = newest_first([echo.clone(), other.clone(), slow.clone()].concat());

    // Every queue, newest first: in one page, and in pages of 3.
    let page = b.list(&query(100)).await.unwrap();
    assert_eq!(ids_of(&page.jobs), all);
    assert_eq!(page.next, None);
    let page = b.list(&query(3)).await.unwrap();
    assert_eq!(ids_of(&page.jobs), all[..3]);
    assert_eq!(page.next, Some(all[2]));
    assert_eq!(ids_of(&list_all(b, query(3)).await), all);
    assert_eq!(ids_of(&list_all(b, query(1)).await), all);

    let q = |f: &dyn Fn(&mut JobQuery)| {
        let mut q = query(4);
        f(&mut q);
        q
    };
    let found = list_all(b, q(&|q| q.queues = vec!["slow".into()])).await;
    assert_eq!(ids_of(&found), newest_first(slow.clone()));
    let found = list_all(b, q(&|q| q.task = Some("other".into()))).await;
    assert_eq!(ids_of(&found), newest_first(other.clone()));
    let found = list_all(b, q(&|q| q.parent = Some(echo[0]))).await;
    assert_eq!(ids_of(&found), newest_first(other.clone()));
    let found = list_all(b, q(&|q| q.beat = Some("nightly".into()))).await;
    assert_eq!(ids_of(&found), newest_first(slow.clone()));
    let found = list_all(b, q(&|q| q.since = Some(middle))).await;
    assert_eq!(
        ids_of(&found),
        newest_first([other.clone(), slow.clone()].concat())
    );
    let found = list_all(b, q(&|q| q.until = Some(middle))).await;
    assert_eq!(ids_of(&found), newest_first(echo.clone()));
    let found = list_all(
        b,
        q(&|q| {
            q.until = Some(middle);
            q.cursor = Some(echo[3]);
        }),
    )
    .await;
    assert_eq!(ids_of(&found), newest_first(echo[..3].to_vec()));

    // The first echo job succeeds, the second fails, the third runs, the
    // fourth is revoked; the fifth waits.
    let d = fetch(b, 3).await;
    assert_eq!(
        ids_of(&d.iter().map(|d| d.job.clone()).collect::<Vec<_>>()),
        echo[..3]
    );
    b.settle(settle(
        "work",
        "w",
        vec![
            success(&d[0], "1"),
            ended(&d[1], JobState::Failure, None, false),
        ],
        0,
    ))
    .await
    .unwrap();
    assert_eq!(
        b.revoke(echo[3], false).await.unwrap(),
        RevokeOutcome::Revoked
    );
    let in_state = |state: JobState| q(&move |q: &mut JobQuery| q.state = Some(state));
    let expect = [
        (JobState::Success, vec![echo[0]]),
        (JobState::Failure, vec![echo[1]]),
        (JobState::Started, vec![echo[2]]),
        (JobState::Revoked, vec![echo[3]]),
        (
            JobState::Pending,
            newest_first([vec![echo[4]], other.clone(), slow.clone()].concat()),
        ),
        (JobState::Expired, vec![]),
    ];
    for (state, ids) in expect {
        let found = list_all(b, in_state(state)).await;
        assert_eq!(ids_of(&found), ids, "{state}");
        assert!(found.iter().all(|j| j.state == state), "{state}");
    }
    let started = list_all(b, in_state(JobState::Started)).await;
    assert_eq!(started[0].worker.as_deref(), Some("w"));
    let found = list_all(
        b,
        q(&|q| {
            q.state = Some(JobState::Failure);
            q.queues = vec!["slow".into()];
        }),
    )
    .await;
    assert!(found.is_empty());
    assert!(
        b.list(&JobQuery {
            queues: vec!["nowhere".into()],
            ..query(10)
        })
        .await
        .unwrap()
        .jobs
        .is_empty()
    );
    // A range that holds nothing: `since` after `until`, or a cursor (the
    // next page of a listing `since` a time relative to now, asked for
    // later) older than `since`. Before, the embedded broker panicked.
    let now = Utc::now();
    for q in [
        JobQuery {
            since: Some(now),
            until: Some(now - chrono::Duration::hours(1)),
            ..query(10)
        },
        JobQuery {
            since: Some(now + chrono::Duration::seconds(1)),
            cursor: Some(started[0].id),
            ..query(10)
        },
    ] {
        let page = b.list(&q).await.unwrap();
        assert!(page.jobs.is_empty() && page.next.is_none(), "{page:?}");
    }
}

/// A job leaves the listing when its record expires, and a job that ended
/// leaves its state's listing when it is replayed.
async fn list_forgets_jobs_whose_records_expired(env: Env) {
    let b = &env.broker;
    let mut req = call("{}");
    req.result_ttl_secs = Some(1);
    let short = env.producer.enqueue(req).await.unwrap().job.id;
    let kept = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let d = fetch(b, 2).await;
    b.settle(settle(
        "work",
        "w",
        vec![
            ended(&d[0], JobState::Failure, None, false),
            dead_letter(&d[1]),
        ],
        0,
    ))
    .await
    .unwrap();
    let failed = JobQuery {
        state: Some(JobState::Failure),
        ..query(10)
    };
    assert_eq!(
        ids_of(&list_all(b, failed.clone()).await),
        vec![kept, short]
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A worker's next settle drops what expired from the index.
    b.settle(settle("work", "w", vec![], 0)).await.unwrap();
    assert_eq!(ids_of(&list_all(b, failed.clone()).await), vec![kept]);
    assert_eq!(ids_of(&list_all(b, query(10)).await), vec![kept]);
    assert_eq!(b.replay("work", &[kept]).await.unwrap(), vec![kept]);
    assert!(list_all(b, failed).await.is_empty());
    let pending = list_all(
        b,
        JobQuery {
            state: Some(JobState::Pending),
            ..query(10)
        },
    )
    .await;
    assert_eq!(ids_of(&pending), vec![kept]);
}

/// `scheduled` lists the delayed jobs, soonest first, with their due
/// times; a job revoked meanwhile is not listed.
async fn scheduled_lists_delayed_jobs_soonest_first(env: Env) {
    let b = &env.broker;
    let mut ids = Vec::new();
    for secs in [30.0, 10.0, 20.0, 15.0] {
        let mut req = call("{}");
        req.countdown_secs = Some(secs);
        ids.push(env.producer.enqueue(req).await.unwrap().job.id);
    }
    let _ready = env.producer.enqueue(call("{}")).await.unwrap();
    assert_eq!(
        b.revoke(ids[3], false).await.unwrap(),
        RevokeOutcome::Revoked
    );
    let now = Utc::now();
    let listed = b.scheduled("work", 10).await.unwrap();
    let order: Vec<JobId> = listed.iter().map(|(_, j)| j.id).collect();
    assert_eq!(order, vec![ids[1], ids[2], ids[0]]);
    for ((due, _), secs) in listed.iter().zip([10, 20, 30]) {
        let off = (*due - now).num_milliseconds() - secs * 1000;
        assert!(off.abs() < 5_000, "due {due} is {off} ms off");
    }
    assert_eq!(b.scheduled("work", 2).await.unwrap().len(), 2);
    assert!(b.scheduled("nowhere", 10).await.unwrap().is_empty());
}

fn depth(stats: &[runner::queue::QueueStats], queue: &str) -> (u64, u64, u64) {
    let q = stats.iter().find(|q| q.name == queue).unwrap();
    (q.ready, q.delayed, q.in_flight)
}

fn sorted(mut ids: Vec<JobId>) -> Vec<JobId> {
    ids.sort();
    ids
}

/// A purge ends the waiting jobs it picks (ready, delayed, of one task or
/// all) as REVOKED, announced as events; a dry run lists the same jobs
/// and changes nothing; a running job is left alone, and entries left by
/// jobs revoked before they ran go too (the depths read zero after).
async fn purge_ends_waiting_jobs_and_leaves_running_ones(env: Env) {
    let b = &env.broker;
    let running = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let d = fetch(b, 1).await;
    assert_eq!(d[0].job.id, running);
    let mut ready = Vec::new();
    for _ in 0..3 {
        ready.push(env.producer.enqueue(call("{}")).await.unwrap().job.id);
    }
    let mut delayed = Vec::new();
    for _ in 0..2 {
        let mut req = call("{}");
        req.countdown_secs = Some(600.0);
        delayed.push(env.producer.enqueue(req).await.unwrap().job.id);
    }
    let other = env
        .producer
        .enqueue(EnqueueRequest::task("other", "{}"))
        .await
        .unwrap()
        .job
        .id;
    let revoked = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    assert_eq!(
        b.revoke(revoked, false).await.unwrap(),
        RevokeOutcome::Revoked
    );
    let before = b.queues().await.unwrap();
    assert_eq!(depth(&before, "work"), (5, 2, 1));
    let mut events = b.subscribe().await.unwrap();

    let echo = |ready: bool, delayed: bool, dry_run: bool| PurgeFilter {
        ready,
        delayed,
        task: Some("echo".into()),
        dry_run,
    };
    let listed = b.purge("work", &echo(true, true, true)).await.unwrap();
    let mut both = [ready.clone(), delayed.clone()].concat();
    both.sort();
    assert_eq!(
        sorted(listed),
        both,
        "a dry run lists the echo jobs waiting"
    );
    assert_eq!(depth(&b.queues().await.unwrap(), "work"), (5, 2, 1));
    assert_eq!(
        b.get(ready[0]).await.unwrap().unwrap().state,
        JobState::Pending
    );

    // The ready echo jobs only.
    let purged = b.purge("work", &echo(true, false, false)).await.unwrap();
    assert_eq!(sorted(purged), sorted(ready.clone()));
    for id in &ready {
        let job = b.get(*id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Revoked);
        let error = job.error.unwrap();
        assert_eq!(
            (error.kind.as_str(), error.message.as_str()),
            ("revoked", PURGED)
        );
        assert!(job.finished_at.is_some());
    }
    let mut announced = Vec::new();
    while announced.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event per purged job")
            .unwrap();
        // The job revoked before the subscription may still be announced
        // on a cluster, where its master's message reaches the node this
        // broker subscribed through a moment later.
        if ev.state == JobState::Revoked && ev.id != revoked {
            announced.push(ev.id);
        }
    }
    assert_eq!(sorted(announced), sorted(ready.clone()));
    // Ready left: the other task's job (the revoked job's entry is
    // dropped with the purge, being stale).
    assert_eq!(depth(&b.queues().await.unwrap(), "work"), (1, 2, 1));

    // Everything else waiting; the running job stays.
    let purged = b.purge("work", &PurgeFilter::default()).await.unwrap();
    let mut rest = [delayed.clone(), vec![other]].concat();
    rest.sort();
    assert_eq!(sorted(purged), rest);
    assert_eq!(depth(&b.queues().await.unwrap(), "work"), (0, 0, 1));
    let held = b.running("work").await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].id, held[0].state), (running, JobState::Started));
    assert_eq!(held[0].worker.as_deref(), Some("w"));
    assert!(
        b.purge("work", &PurgeFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Nothing purged runs; the running job ends as it would have.
    let r = b
        .settle(settle("work", "w", vec![success(&d[0], "1")], 10))
        .await
        .unwrap();
    assert!(r.deliveries.is_empty());
    assert_eq!(
        b.get(running).await.unwrap().unwrap().state,
        JobState::Success
    );
    assert!(b.running("work").await.unwrap().is_empty());
    assert!(
        b.purge("nowhere", &PurgeFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A queue longer than a purge's page (500 entries) is purged whole, with
/// a task filter that leaves every other entry in place.
async fn purge_pages_through_long_queues(env: Env) {
    let b = &env.broker;
    let mut reqs = Vec::new();
    for i in 0..1300 {
        let task = if i % 3 == 0 { "other" } else { "echo" };
        let mut req = EnqueueRequest::task(task, "{}");
        if i % 2 == 0 {
            req.countdown_secs = Some(600.0);
        }
        reqs.push(req);
    }
    let jobs = env.producer.enqueue_batch(reqs).await.unwrap();
    let mut echo: Vec<JobId> = jobs
        .iter()
        .filter(|e| e.job.task.as_deref() == Some("echo"))
        .map(|e| e.job.id)
        .collect();
    echo.sort();
    let filter = PurgeFilter {
        task: Some("echo".into()),
        ..PurgeFilter::default()
    };
    let purged = b.purge("work", &filter).await.unwrap();
    assert_eq!(purged.len(), echo.len(), "each purged job listed once");
    assert_eq!(sorted(purged), echo);
    // 434 of `other`, half of them delayed.
    assert_eq!(depth(&b.queues().await.unwrap(), "work"), (217, 217, 0));
}

/// A job in a queue no worker reads does not wait forever: once past its
/// expiry a lookup shows it EXPIRED (as a worker would settle it), a worker
/// that comes later does not run it, and its record goes a result TTL
/// after the expiry. Before, it showed PENDING for as long as nobody read
/// the queue.
async fn a_job_waiting_past_its_expiry_shows_expired(env: Env) {
    let b = &env.broker;
    let mut req = call("{}");
    req.expires_in_secs = Some(0.3);
    req.result_ttl_secs = Some(1);
    let id = env.producer.enqueue(req).await.unwrap().job.id;
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Pending);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = b.get(id).await.unwrap().unwrap();
    assert_eq!(seen.state, JobState::Expired);
    assert_eq!(
        seen.error.as_ref().map(|e| e.kind.as_str()),
        Some("expired")
    );
    assert_eq!(seen.finished_at, seen.expires);
    // Its result TTL (1 s) after its expiry, the record is gone.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(b.get(id).await.unwrap().is_none(), "still stored");
}

/// Enqueues a job that expires in 0.5 s, with a result TTL of 1 s.
async fn enqueue_expiring(env: &Env) -> JobId {
    let mut req = call("{}");
    req.expires_in_secs = Some(0.5);
    req.result_ttl_secs = Some(1);
    env.producer.enqueue(req).await.unwrap().job.id
}

/// `d` given back unrun.
fn given_back(d: &runner::queue::Delivery) -> Completion {
    Completion {
        lease: d.lease.clone(),
        settlement: Settlement::Release { started: false },
        had_progress: false,
    }
}

/// A job leased before its expiry keeps its record while it runs, however
/// long past its expiry and result TTL: it can be read, revoked and ended.
/// Before, the next due check deleted the running job's record at its
/// expiry plus its result TTL (when the record of a job that expires
/// unrun goes).
async fn a_running_job_keeps_its_record_past_its_expiry(env: Env) {
    let b = &env.broker;
    let id = enqueue_expiring(&env).await;
    let d = fetch(b, 1).await;
    assert_eq!(d[0].job.id, id);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    // Another worker's due check.
    b.settle(settle("work", "other", vec![], 0)).await.unwrap();
    let seen = b.get(id).await.unwrap();
    assert_eq!(
        seen.map(|j| j.state),
        Some(JobState::Started),
        "the running job's record"
    );
    // It ends as any job does.
    let r = b
        .settle(settle("work", "w", vec![success(&d[0], "1")], 0))
        .await
        .unwrap();
    assert!(r.stale.is_empty());
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Success);
}

/// A job with an expiry that comes back unrun (given back by its worker,
/// or taken back when its lease ran out) expires again as a waiting job
/// does: its record goes at its expiry plus its result TTL. (Its lease
/// had stopped that; with no worker to lease it again, it stayed.)
async fn a_job_back_from_its_worker_expires_again(env: Env) {
    let b = &env.broker;
    // One given back and leased again in one call runs: its record stays.
    let again = enqueue_expiring(&env).await;
    let d = fetch(b, 1).await;
    assert_eq!(d[0].job.id, again);
    let r = b
        .settle(settle("work", "w", vec![given_back(&d[0])], 1))
        .await
        .unwrap();
    assert_eq!(r.deliveries[0].job.id, again);
    let ids = [enqueue_expiring(&env).await, enqueue_expiring(&env).await];
    let mut short = settle("work", "w", vec![], 2);
    short.lease = Duration::from_millis(300);
    let d = b.settle(short).await.unwrap().deliveries;
    assert_eq!(d.len(), 2);
    // One given back; the other's lease runs out (taken back by a due
    // check) without a word from its worker.
    b.settle(settle("work", "w", vec![given_back(&d[0])], 0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = b.settle(settle("work", "other", vec![], 0)).await.unwrap();
    assert_eq!(r.reclaimed, 1);
    // Past their expiry and result TTL, a due check lets the two go.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    b.settle(settle("work", "other", vec![], 0)).await.unwrap();
    for id in ids {
        assert!(b.get(id).await.unwrap().is_none(), "{id} still stored");
    }
    let running = b.get(again).await.unwrap().map(|j| j.state);
    assert_eq!(running, Some(JobState::Started));
}

/// A worker whose id is a number tells its own leases from the others' by
/// their worker field: it wakes when another's lease runs out. Before,
/// worker `0` took every first delivery (`<id>|0|<worker>|..`) for its
/// own, and a dead worker's jobs waited for the safety check.
async fn a_worker_named_by_a_number_wakes_for_the_others_leases(env: Env) {
    let b = &env.broker;
    env.producer
        .enqueue_batch(vec![call("{}"), call("{}")])
        .await
        .unwrap();
    let mut other = settle("work", "w", vec![], 1);
    other.lease = Duration::from_secs(20);
    assert_eq!(b.settle(other).await.unwrap().deliveries.len(), 1);
    let mut zero = settle("work", "0", vec![], 1);
    zero.lease = Duration::from_secs(600);
    assert_eq!(b.settle(zero).await.unwrap().deliveries.len(), 1);
    let mut check = settle("work", "0", vec![], 0);
    check.holds_leases = true;
    let next = b.settle(check).await.unwrap().next_due;
    let until = next.map(|t| t - chrono::Utc::now());
    assert!(
        until.is_some_and(|u| u <= chrono::Duration::seconds(20)),
        "wakes in {until:?}, not when w's lease runs out"
    );
}

/// A final, dead-lettered completion of `d`.
fn dead_letter(d: &runner::queue::Delivery) -> Completion {
    ended(d, JobState::Failure, None, true)
}

/// Settles `leased` (of queue `work`, worker `w`) as failed for good: dead
/// letters.
pub(crate) async fn settle_dead(b: &Arc<dyn Broker>, leased: &[runner::queue::Delivery]) {
    let dead: Vec<Completion> = leased.iter().map(dead_letter).collect();
    b.settle(settle("work", "w", dead, 0)).await.unwrap();
}

/// Two replays of one dead letter at once queue it once, on both brokers
/// (the embedded one read the dead letters and queued them under two
/// locks, so both could take it).
async fn concurrent_replays_queue_a_dead_letter_once(env: Env) {
    let b = &env.broker;
    let e = env.producer.enqueue(call("{}")).await.unwrap();
    let d = fetch(b, 1).await;
    b.settle(settle("work", "w", vec![dead_letter(&d[0])], 0))
        .await
        .unwrap();
    let replays = (0..8).map(|_| {
        let b = b.clone();
        tokio::spawn(async move { b.replay("work", &[e.job.id]).await.unwrap() })
    });
    let mut replayed = Vec::new();
    for r in futures::future::join_all(replays).await {
        replayed.extend(r.unwrap());
    }
    assert_eq!(replayed, vec![e.job.id], "replayed once");
    let work = b.queues().await.unwrap();
    let work = work.iter().find(|q| q.name == "work").unwrap();
    assert_eq!((work.ready, work.dead), (1, 0), "{work:?}");
}

/// Replaying every dead letter while a worker fails the replayed jobs for
/// good again at once replays each letter once, and ends. Before, on
/// Redis, a letter dead again went back to the end of the set, and the
/// replay's later pages replayed it again, for as long as the worker kept
/// up.
async fn replay_all_takes_the_letters_dead_when_it_began(env: Env) {
    let b = &env.broker;
    let n = 1500;
    let reqs: Vec<_> = (0..n).map(|i| call(&i.to_string())).collect();
    env.producer.enqueue_batch(reqs).await.unwrap();
    let mut leased = Vec::new();
    while leased.len() < n {
        let d = fetch(b, 1000).await;
        assert!(!d.is_empty(), "{} of {n} leased", leased.len());
        leased.extend(d);
    }
    for chunk in leased.chunks(500) {
        settle_dead(b, chunk).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let d = fetch(&b, 200).await;
                if d.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else {
                    settle_dead(&b, &d).await;
                }
            }
        })
    };
    let replayed = tokio::time::timeout(Duration::from_secs(60), b.replay("work", &[]))
        .await
        .expect("the replay ends")
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    killer.await.unwrap();
    let mut once = replayed.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), replayed.len(), "a letter replayed twice");
    assert_eq!(replayed.len(), n);
}

/// The embedded broker forgets what Redis would let expire: records past
/// their result TTL, idempotency keys past theirs, revoke marks and
/// progress of jobs that ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_forgets_what_expired() {
    let broker = Arc::new(EmbeddedBroker::new().with_idempotency_ttl(Duration::from_millis(500)));
    let b: Arc<dyn Broker> = broker.clone();
    let p = Producer::new(b.clone(), registry().await);
    let mut r = call("{}");
    r.idempotency_key = Some("once".into());
    r.result_ttl_secs = Some(1);
    p.enqueue(r).await.unwrap();
    let d = fetch(&b, 1).await;
    b.progress(
        &d[0].lease,
        &runner::queue::Progress {
            done: 1,
            total: 2,
            message: None,
        },
    )
    .await
    .unwrap();
    // Revoked while running: marked until it ends.
    b.revoke(d[0].job.id, false).await.unwrap();
    let held = broker.held();
    assert_eq!(
        (
            held.records,
            held.idempotency_keys,
            held.revoked,
            held.progress
        ),
        (1, 1, 1, 1),
        "{held:?}"
    );
    b.settle(settle("work", "w", vec![success(&d[0], "1")], 0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        broker.held(),
        Default::default(),
        "everything expired is gone"
    );
}

/// A worker may lease thousands of jobs in one call and end thousands in
/// one call (a large prefetch, many slots). A Redis script takes at most
/// 8,000 values at once, so the broker splits such calls. Before, the
/// script popped the jobs and then failed: they were in no list and held
/// no lease, lost.
async fn thousands_of_jobs_lease_and_end_in_one_call(env: Env) {
    const N: usize = 4500;
    let b = &env.broker;
    for _ in 0..N / 500 {
        let reqs = (0..500).map(|_| call("{}")).collect();
        env.producer.enqueue_batch(reqs).await.unwrap();
    }
    let r = b.settle(settle("work", "w", vec![], N)).await.unwrap();
    assert_eq!(r.deliveries.len(), N);
    assert_eq!(r.popped, N);
    // Extended all at once, one of them revoked meanwhile: none lost, the
    // revoke told. (On Redis one call of 4,500 failed: Lua's `unpack`
    // stops at about 8,000 values, and the leases ran out.)
    let revoked = r.deliveries[N - 2].job.id;
    b.revoke(revoked, false).await.unwrap();
    let leases: Vec<Lease> = r.deliveries.iter().map(|d| d.lease.clone()).collect();
    let ext = b.extend(&leases, Duration::from_secs(60)).await.unwrap();
    assert!(ext.lost.is_empty(), "{} lost", ext.lost.len());
    assert_eq!(ext.revoked, vec![(revoked, false)]);
    let done: Vec<Completion> = r.deliveries.iter().map(|d| success(d, "1")).collect();
    let ended = b.settle(settle("work", "w", done, 0)).await.unwrap();
    assert!(ended.stale.is_empty(), "{} stale", ended.stale.len());
    let q = b.queues().await.unwrap();
    let work = q.iter().find(|q| q.name == "work").unwrap();
    assert_eq!((work.ready, work.in_flight), (0, 0), "{work:?}");
    for d in [&r.deliveries[0], &r.deliveries[N - 1]] {
        let j = b.get(d.job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Success);
    }
}

/// Runs `cmd` on `server`, as a test looks at what the broker wrote.
fn ask<T: redis::FromRedisValue>(server: &RedisServer, cmd: &mut redis::Cmd) -> T {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    cmd.query(&mut conn).unwrap()
}

/// The records of ended jobs expire, and a due check forgets them from the
/// queue's indexes 1,000 at a time. It says when to look again: at once
/// while more are past, else when 1,000 more will be. Before, it said
/// nothing of them, and a worker alone on a queue (no delays, no other
/// worker's leases) forgot 1,000 every 15 minutes: the indexes grew
/// without bound above about one job a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_due_checks_keep_up_with_expiring_records() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let b = &env.broker;
    for _ in 0..3 {
        let reqs = (0..500)
            .map(|_| {
                let mut r = call("{}");
                r.result_ttl_secs = Some(1);
                r
            })
            .collect();
        env.producer.enqueue_batch(reqs).await.unwrap();
    }
    let r = b.settle(settle("work", "w", vec![], 1500)).await.unwrap();
    let done: Vec<Completion> = r.deliveries.iter().map(|d| success(d, "1")).collect();
    let mut req = settle("work", "w", done, 0);
    req.due_check = false;
    b.settle(req).await.unwrap();
    let ends = || -> u64 { ask(&server, redis::cmd("ZCARD").arg("runner:{work}:ends")) };
    assert_eq!(ends(), 1500);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = b.settle(settle("work", "w", vec![], 0)).await.unwrap();
    assert_eq!(ends(), 500);
    let next = r.next_due.expect("more expired records to forget");
    assert!(next <= Utc::now(), "look again at once, not at {next}");
    b.settle(settle("work", "w", vec![], 0)).await.unwrap();
    assert_eq!(ends(), 0);
}

/// A job's dead-letter entry and stored progress go when its record
/// expires. Before, nothing removed a dead letter's entry but a listing
/// of them, so the queue's dead count kept counting letters long gone,
/// and the progress of a job that ended without clearing it (its run
/// panicked, or it ran again elsewhere after its worker died) stayed for
/// good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_expired_record_takes_its_dead_letter_entry_and_progress() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let b = &env.broker;
    let reqs = (0..2).map(|_| call("{}")).collect();
    env.producer.enqueue_batch(reqs).await.unwrap();
    let d = b
        .settle(settle("work", "w", vec![], 2))
        .await
        .unwrap()
        .deliveries;
    let progress = runner::queue::Progress {
        done: 1,
        total: 2,
        message: None,
    };
    b.progress(&d[1].lease, &progress).await.unwrap();
    let done = vec![
        ended(&d[0], JobState::Failure, None, true),
        success(&d[1], "1"),
    ];
    b.settle(settle("work", "w", done, 0)).await.unwrap();
    let dead = |b: &Arc<dyn Broker>| {
        let b = b.clone();
        async move {
            let q = b.queues().await.unwrap();
            q.iter().find(|q| q.name == "work").unwrap().dead
        }
    };
    assert_eq!(dead(b).await, 1);
    let progress_kept = || -> bool {
        ask(
            &server,
            redis::cmd("HEXISTS")
                .arg("runner:{work}:progress")
                .arg(d[1].job.id.to_string()),
        )
    };
    assert!(
        progress_kept(),
        "the run ended without clearing its progress"
    );
    // Both records' TTLs run out.
    for x in &d {
        let id = x.job.id.to_string();
        let _: () = ask(
            &server,
            redis::cmd("ZADD").arg("runner:{work}:ends").arg(0).arg(&id),
        );
        let _: () = ask(
            &server,
            redis::cmd("DEL").arg(format!("runner:{{work}}:job:{id}")),
        );
    }
    b.settle(settle("work", "w", vec![], 0)).await.unwrap();
    assert_eq!(dead(b).await, 0);
    assert!(!progress_kept());
}

/// An inspection whose asker is gone (an HTTP client that hung up drops
/// the request's future) leaves nothing behind. Before, the embedded
/// broker kept its reply channel for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_forgets_an_inspection_nobody_waits_for() {
    let broker = Arc::new(EmbeddedBroker::new());
    let b: Arc<dyn Broker> = broker.clone();
    // A worker that never answers.
    let _signals = b.signals("w", &["work".into()]).await.unwrap();
    let asking = tokio::spawn({
        let b = b.clone();
        async move { b.inspect(Duration::from_secs(10)).await }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while broker.held().inspections == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the inspection waits for the worker");
    asking.abort();
    assert!(asking.await.unwrap_err().is_cancelled());
    assert_eq!(broker.held().inspections, 0);
}

/// A Redis script checks every argument before its first write: a
/// settlement with a TTL Redis would refuse is refused whole, and the lease
/// it names is still held (so the job is settled later or redelivered).
/// Before, `settle.lua` removed the lease, then failed on `SET ... PX`: the
/// job was in no list, STARTED forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_scripts_refuse_bad_arguments_before_writing() {
    let env = redis().await;
    let b = &env.broker;
    let id = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    let d = fetch(b, 1).await;
    let mut bad = success(&d[0], "1");
    if let Settlement::Finish { job, .. } = &mut bad.settlement {
        job.result_ttl_ms = 10_u64.pow(16);
    }
    let err = b
        .settle(settle("work", "w", vec![bad], 0))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad argument ttl of completion 0"), "{err}");
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Started);
    // The lease is still ours: a good settlement is not stale.
    let r = b
        .settle(settle("work", "w", vec![success(&d[0], "1")], 0))
        .await
        .unwrap();
    assert!(r.stale.is_empty(), "the lease was lost: {:?}", r.stale);
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Success);
}

/// One clock: a worker whose clock runs 20 s ahead reclaims no live lease
/// of another worker, since lease deadlines and the check both come from
/// the Redis server's clock; what it is told (the next due time) is on its
/// own clock. Before, the settle script compared leases with the calling
/// worker's clock and handed the job out a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_clock_runs_ahead_reclaims_no_live_lease() {
    let server = RedisServer::start();
    let a: Arc<dyn Broker> = Arc::new(RedisBroker::connect(&server.url()).await.unwrap());
    let skew = 20_000;
    let ahead: Arc<dyn Broker> = Arc::new(
        RedisBroker::connect(&server.url())
            .await
            .unwrap()
            .with_clock_skew(skew),
    );
    let producer = Producer::new(a.clone(), registry().await);
    let id = producer.enqueue(call("{}")).await.unwrap().job.id;
    let mut req = settle("work", "a", vec![], 1);
    req.lease = Duration::from_secs(10);
    let d = a.settle(req).await.unwrap().deliveries;
    assert_eq!(d.len(), 1);

    let r = ahead
        .settle(settle("work", "ahead", vec![], 1))
        .await
        .unwrap();
    assert!(r.deliveries.is_empty(), "a live lease was reclaimed");
    let next = r.next_due.expect("the lease's end is due");
    let ahead_now = Utc::now() + chrono::Duration::milliseconds(skew);
    let wait = (next - ahead_now).num_milliseconds();
    assert!(
        (5_000..=15_000).contains(&wait),
        "next due in {wait} ms on the skewed clock"
    );

    let r = a
        .settle(settle("work", "a", vec![success(&d[0], "1")], 0))
        .await
        .unwrap();
    assert!(r.stale.is_empty(), "{:?}", r.stale);
    assert_eq!(a.get(id).await.unwrap().unwrap().redeliveries, 0);
}

/// The test's own connection to `server` (the default user: every right).
async fn admin_connection(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Starts counting commands afresh (`CONFIG RESETSTAT`).
async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

/// Commands `server` ran since its stats were reset, by name.
async fn commands_run(conn: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap()
}

/// The queue's history is begun once a minute: the scripts say which
/// minute they saw, the broker passes it to its next call, and a call in
/// that same minute does not read the history's `last` again (one `HGET`
/// per script call saved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_history_minute_is_read_once_a_minute() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let minute = |c: &mut redis::Connection| -> i64 {
        let t: Vec<String> = redis::cmd("TIME").query(c).unwrap();
        t[0].parse::<i64>().unwrap() / 60
    };
    // A minute may turn between the calls: then they read it, rightly.
    for _ in 0..3 {
        let m = minute(&mut c);
        env.producer.enqueue(call("{}")).await.unwrap();
        let before = command_calls(&server, "hget");
        env.producer.enqueue(call("{}")).await.unwrap();
        let r = env
            .broker
            .settle(settle("work", "w", vec![], 10))
            .await
            .unwrap();
        assert!(!r.deliveries.is_empty());
        let r = env
            .broker
            .settle(settle(
                "work",
                "w",
                r.deliveries.iter().map(|d| success(d, "1")).collect(),
                0,
            ))
            .await
            .unwrap();
        assert!(r.stale.is_empty());
        let after = command_calls(&server, "hget");
        if minute(&mut c) != m {
            continue;
        }
        assert_eq!(after, before, "no call read the history's minute again");
        // The history still counts every change of the minute.
        let hist: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
            .arg("runner:{work}:hist")
            .query(&mut c)
            .unwrap();
        assert_eq!(hist.get("last"), Some(&m));
        assert!(
            hist.get(&format!("{m}:SUCCESS")).is_some_and(|n| *n >= 2),
            "{hist:?}"
        );
        return;
    }
    panic!("the minute turned three times");
}

/// Costs that do not grow with the data: listing workers scans no
/// keyspace, replaying one dead letter reads only its record, a job's
/// lease is found by its id, an expired heartbeat leaves the listing.
/// Before, `workers()` ran SCAN over every key, `replay` read up to
/// 100,000 dead letters to replay one, status and revoke scanned every
/// lease of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_listings_and_replays_read_only_what_they_need() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let b = &env.broker;
    let mut conn = admin_connection(&server).await;
    let worker = |id: &str| runner::queue::WorkerInfo {
        id: id.into(),
        hostname: "h".into(),
        pid: 1,
        queues: vec!["work".into()],
        concurrency: 1,
        started_at: Utc::now(),
        last_seen: Utc::now(),
        running: vec![],
        processed: 0,
        failed: 0,
    };
    b.heartbeat(&worker("live"), Duration::from_secs(60))
        .await
        .unwrap();
    b.heartbeat(&worker("short"), Duration::from_secs(1))
        .await
        .unwrap();
    let mut dead = Vec::new();
    for _ in 0..3 {
        env.producer.enqueue(call("{}")).await.unwrap();
        let d = fetch(b, 1).await;
        b.settle(settle("work", "w", vec![dead_letter(&d[0])], 0))
            .await
            .unwrap();
        dead.push(d[0].job.id);
    }
    let running = env.producer.enqueue(call("{}")).await.unwrap().job.id;
    b.settle(settle("work", "w", vec![], 1)).await.unwrap();
    reset_stats(&mut conn).await;
    // A lease is looked up by id, not scanned for.
    assert_eq!(
        b.get(running).await.unwrap().unwrap().state,
        JobState::Started
    );
    assert_eq!(
        b.revoke(running, false).await.unwrap(),
        RevokeOutcome::WillNotRetry
    );
    assert_eq!(b.workers().await.unwrap().len(), 2);
    assert_eq!(b.replay("work", &dead[1..2]).await.unwrap(), vec![dead[1]]);
    let stats = commands_run(&mut conn).await;
    assert!(!stats.contains("cmdstat_scan"), "{stats}");
    assert!(!stats.contains("cmdstat_zrange"), "{stats}");
    assert!(!stats.contains("cmdstat_zscan"), "{stats}");
    assert_eq!(b.dead_letters("work", 10).await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let ws = b.workers().await.unwrap();
    assert_eq!(
        ws.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["live"]
    );
}

/// A queue stored by an earlier build (layout 1: every record in
/// `job:<id>`) is moved by this build's first settle, before it leases:
/// every waiting job runs (a lease drops an entry whose record is not in
/// `live`), and reads find the records before and after the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_the_earlier_layout_is_moved_before_it_is_leased() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let mut conn = admin_connection(&server).await;
    let mut ids = Vec::new();
    for p in [0, 0, 5] {
        let mut req = call("{}");
        req.priority = Some(p);
        ids.push(env.producer.enqueue(req).await.unwrap().job.id);
    }
    // A queue this build creates is in layout 2 from the start: its
    // first worker has nothing to move.
    let layout = async |conn: &mut redis::aio::MultiplexedConnection| -> Option<String> {
        redis::cmd("GET")
            .arg("runner:{work}:layout")
            .query_async(conn)
            .await
            .unwrap()
    };
    assert_eq!(layout(&mut conn).await.as_deref(), Some("2"));
    // Back to layout 1, as an earlier build left it (which set no layout).
    let _: () = redis::cmd("DEL")
        .arg("runner:{work}:layout")
        .query_async(&mut conn)
        .await
        .unwrap();
    for id in &ids {
        let rec: String = redis::cmd("HGET")
            .arg("runner:{work}:live")
            .arg(id.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::pipe()
            .set(format!("runner:{{work}}:job:{id}"), rec)
            .hdel("runner:{work}:live", id.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(
        env.broker.get(ids[0]).await.unwrap().unwrap().state,
        JobState::Pending
    );
    // A process of this build: strict, and new to the queue.
    let b: Arc<dyn Broker> = Arc::new(
        RedisBroker::connect(&server.url())
            .await
            .unwrap()
            .with_strict_keys(),
    );
    let r = b.settle(settle("work", "w", vec![], 10)).await.unwrap();
    let mut leased: Vec<JobId> = r.deliveries.iter().map(|d| d.job.id).collect();
    assert_eq!(leased[0], ids[2], "the prioritized job first");
    leased.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(leased, want, "no job of the earlier layout is dropped");
    assert_eq!(layout(&mut conn).await.as_deref(), Some("2"));
    let left: u64 = redis::cmd("EXISTS")
        .arg(
            ids.iter()
                .map(|id| format!("runner:{{work}}:job:{id}"))
                .collect::<Vec<_>>(),
        )
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the records moved to live");
    assert_eq!(
        b.get(ids[1]).await.unwrap().unwrap().state,
        JobState::Started
    );
    let done: Vec<Completion> = r.deliveries.iter().map(|d| success(d, "1")).collect();
    b.settle(settle("work", "w", done, 0)).await.unwrap();
    for id in &ids {
        assert_eq!(
            env.broker.get(*id).await.unwrap().unwrap().state,
            JobState::Success
        );
    }
    let live: u64 = redis::cmd("HLEN")
        .arg("runner:{work}:live")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(live, 0, "ended jobs leave live");
}

/// The index bucket keys of a server (the test's own: KEYS is fine here).
async fn index_buckets(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("runner:{ids}:*")
        .query_async(conn)
        .await
        .unwrap()
}

/// Status and revoke find a job's queue through the id index: one HGET and
/// one GET whatever the number of queues (before, SMEMBERS of every queue
/// name and one GET per queue). An id the index does not know is still
/// found; the index outlives a dead letter's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_job_is_found_by_its_id_whatever_the_number_of_queues() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let b = &env.broker;
    let mut conn = admin_connection(&server).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let job = runner::queue::Job::new(format!("q{i}"), "{}", Utc::now());
        ids.push(b.enqueue(vec![job]).await.unwrap()[0].job.id);
    }
    let buckets = index_buckets(&mut conn).await;
    assert!(!buckets.is_empty() && buckets.len() <= 2, "{buckets:?}");
    reset_stats(&mut conn).await;
    let id = ids[17];
    assert_eq!(b.get(id).await.unwrap().unwrap().queue, "q17");
    assert_eq!(b.revoke(id, false).await.unwrap(), RevokeOutcome::Revoked);
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Revoked);
    let stats = commands_run(&mut conn).await;
    // Three lookups, none of them in the 39 other queues: the records read
    // are this job's (by the lookups and the status and revoke scripts).
    assert_eq!(calls_of(&stats, "smembers"), 0, "{stats}");
    assert!(calls_of(&stats, "get") <= 6, "{stats}");
    // An id nobody made is looked for in every queue.
    assert!(b.get(runner::queue::JobId::new()).await.unwrap().is_none());
    let stats = commands_run(&mut conn).await;
    assert_eq!(calls_of(&stats, "smembers"), 1, "{stats}");

    // Without its entry a job is still found (slower).
    let _: () = redis::cmd("DEL")
        .arg(&buckets)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(b.get(ids[3]).await.unwrap().unwrap().queue, "q3");

    // A dead letter is kept 7 days: its entry as long.
    let e = env.producer.enqueue(call("{}")).await.unwrap();
    let d = fetch(b, 1).await;
    assert_eq!(d[0].job.id, e.job.id);
    let bucket = index_buckets(&mut conn).await;
    let ttl_before: i64 = redis::cmd("PTTL")
        .arg(&bucket[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl_before < 6 * 24 * 3600 * 1000, "{ttl_before}");
    b.settle(settle("work", "w", vec![dead_letter(&d[0])], 0))
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&bucket[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl >= 7 * 24 * 3600 * 1000, "{ttl}");
    assert_eq!(
        b.get(e.job.id).await.unwrap().unwrap().state,
        JobState::Failure
    );
}

/// Every command `server` ran since its stats were reset, but the test's
/// own INFO and CONFIG.
async fn total_commands(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats = commands_run(conn).await;
    stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| !l.starts_with("info:") && !l.starts_with("config"))
        .filter_map(|l| l.split_once(":calls="))
        .filter_map(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// A page of 100 jobs costs the same number of Redis commands with 100
/// jobs stored as with 100,000 (`RUNNER_LIST_STORED` sets the larger
/// number: the note's 10^6 figure), unfiltered, by task and by state: the
/// index is read from the cursor on, never scanned whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_page_of_jobs_costs_the_same_whatever_the_number_stored() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let b = &env.broker;
    let mut conn = admin_connection(&server).await;
    let many: usize = std::env::var("RUNNER_LIST_STORED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let store = |n: usize| async move {
        let mut left = n;
        while left > 0 {
            let batch: Vec<Job> = (0..left.min(1000))
                .map(|i| {
                    let mut j = Job::new("work", "{}", Utc::now());
                    j.task = Some(if i % 10 == 0 { "other" } else { "echo" }.into());
                    j
                })
                .collect();
            left -= batch.len();
            b.enqueue(batch).await.unwrap();
        }
    };
    // A few failures, among the first jobs.
    store(10).await;
    let d = fetch(b, 5).await;
    let failed: Vec<Completion> = d
        .iter()
        .map(|d| ended(d, JobState::Failure, None, false))
        .collect();
    b.settle(settle("work", "w", failed, 0)).await.unwrap();
    store(90).await;
    let pages = [
        query(100),
        JobQuery {
            task: Some("echo".into()),
            ..query(100)
        },
        JobQuery {
            state: Some(JobState::Failure),
            ..query(100)
        },
    ];
    let mut costs = Vec::new();
    let mut have = 100;
    for stored in [100, many] {
        store(stored - have).await;
        have = stored;
        let mut cost = Vec::new();
        for q in &pages {
            reset_stats(&mut conn).await;
            let page = b.list(q).await.unwrap();
            cost.push((page.jobs.len(), total_commands(&mut conn).await));
        }
        println!("{stored} jobs stored: (jobs, commands) per page {cost:?}");
        costs.push(cost);
    }
    let jobs = |i: usize| costs[i].iter().map(|c| c.0).collect::<Vec<_>>();
    let commands = |i: usize| costs[i].iter().map(|c| c.1).collect::<Vec<_>>();
    assert_eq!(jobs(0), [100, 90, 5]);
    assert_eq!(jobs(1), [100, 100, 5]);
    assert_eq!(commands(0), commands(1));
}

/// The job index goes with the records: once every record expired, a
/// worker's settle leaves the index keys empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_the_job_index_goes_with_the_records() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let b = &env.broker;
    let mut conn = admin_connection(&server).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let mut req = call("{}");
        req.result_ttl_secs = Some(1);
        ids.push(env.producer.enqueue(req).await.unwrap().job.id);
    }
    assert_eq!(
        b.revoke(ids[3], false).await.unwrap(),
        RevokeOutcome::Revoked
    );
    let d = fetch(b, 3).await;
    b.settle(settle(
        "work",
        "w",
        vec![
            success(&d[0], "1"),
            ended(&d[1], JobState::Failure, None, false),
            ended(&d[2], JobState::Expired, None, false),
        ],
        0,
    ))
    .await
    .unwrap();
    let sizes = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut pipe = redis::pipe();
        for k in [
            "jobs",
            "ends",
            "jobs:FAILURE",
            "jobs:REVOKED",
            "jobs:EXPIRED",
        ] {
            pipe.zcard(format!("runner:{{work}}:{k}"));
        }
        let conn = conn.clone();
        async move {
            let mut conn = conn;
            pipe.query_async::<Vec<u64>>(&mut conn).await.unwrap()
        }
    };
    assert_eq!(sizes(&mut conn).await, vec![4, 4, 1, 1, 1]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    b.settle(settle("work", "w", vec![], 0)).await.unwrap();
    assert_eq!(sizes(&mut conn).await, vec![0, 0, 0, 0, 0]);
}

/// On Redis the depth of a minute is written once, by the first change of
/// a later minute, before that change: until then the minute of the last
/// change (`last`) shows the depth now. A call that changes nothing writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_minutes_depth_is_written_by_the_next_minutes_first_change() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let b = &env.broker;
    let mut conn = admin_connection(&server).await;
    let key = "runner:{work}:hist";
    let fields = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let f: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            f
        }
    };
    // As if the queue had last changed `ago` minutes before this one.
    let last_changed = |conn: &mut redis::aio::MultiplexedConnection, ago: i64| {
        let mut conn = conn.clone();
        async move {
            let (secs, _): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            let m = secs / 60 - ago;
            let _: () = redis::cmd("HSET")
                .arg(key)
                .arg("last")
                .arg(m)
                .query_async(&mut conn)
                .await
                .unwrap();
            m
        }
    };
    // The depth and running count written for minute `m`.
    fn written(
        f: &std::collections::HashMap<String, String>,
        m: i64,
    ) -> (Option<&str>, Option<&str>) {
        let field = |what: &str| f.get(&format!("{m}:{what}")).map(String::as_str);
        (field("depth"), field("running"))
    }
    // The point of minute `m` (counted from the end: the minute may turn
    // during the test).
    let at = |p: &[runner::queue::history::HistoryPoint], m: i64| {
        let p = p
            .iter()
            .find(|p| p.at.timestamp() / 60 == m)
            .unwrap()
            .clone();
        (p.waiting, p.running)
    };
    for _ in 0..3 {
        env.producer.enqueue(call("{}")).await.unwrap();
    }
    let f = fields(&mut conn).await;
    assert!(f.keys().all(|k| !k.ends_with(":depth")), "{f:?}");
    assert!(f.contains_key("last"), "{f:?}");
    let p = hour(b, "work").await;
    assert_eq!((p[59].waiting, p[59].running), (Some(3), Some(0)));

    // A lease: the depth before it goes to the minute of the last change.
    // (Each step moves `last` back by hand, and then asks through a broker
    // new to the queue: a process that saw the history begin this minute
    // rightly does not read `last` again in it, `hist_known`.)
    let m = last_changed(&mut conn, 5).await;
    let env = redis_on(&server).await;
    let b = &env.broker;
    let d = fetch(b, 2).await;
    assert_eq!(d.len(), 2);
    let f = fields(&mut conn).await;
    assert_eq!(written(&f, m), (Some("3"), Some("0")), "{f:?}");
    let p = hour(b, "work").await;
    assert_eq!(at(&p, m), (Some(3), Some(0)), "{:?}", &p[50..]);
    assert_eq!(at(&p, m + 1), (Some(3), Some(0)), "carried forward");
    assert_eq!((p[59].waiting, p[59].running), (Some(1), Some(2)));

    // A settle: the same, before it.
    let m = last_changed(&mut conn, 3).await;
    let env = redis_on(&server).await;
    let b = &env.broker;
    b.settle(settle("work", "w", vec![success(&d[0], "1")], 0))
        .await
        .unwrap();
    let f = fields(&mut conn).await;
    assert_eq!(written(&f, m), (Some("1"), Some("2")), "{f:?}");
    let p = hour(b, "work").await;
    assert_eq!(at(&p, m), (Some(1), Some(2)));
    assert_eq!((p[59].waiting, p[59].running), (Some(1), Some(1)));
    assert_eq!(totals(&p), [3, 1, 0, 0, 0]);

    // A call that changes nothing writes nothing; the minute of the last
    // change shows the depth now, and so do the minutes after it.
    let d2 = fetch(b, 5).await;
    assert_eq!(d2.len(), 1);
    let m = last_changed(&mut conn, 2).await;
    let env = redis_on(&server).await;
    let b = &env.broker;
    b.settle(settle("work", "w", vec![], 5)).await.unwrap();
    let f = fields(&mut conn).await;
    assert_eq!(
        f.get("last").map(String::as_str),
        Some(m.to_string().as_str())
    );
    assert!(!f.contains_key(&format!("{m}:depth")), "{f:?}");
    let p = hour(b, "work").await;
    assert_eq!(at(&p, m), (Some(0), Some(2)));
    assert_eq!((p[59].waiting, p[59].running), (Some(0), Some(2)));
}

/// A leased job whose record this build cannot read (a newer build's
/// field, or damage) is left out of the reply, not the reason to drop it:
/// the jobs leased with it run, and it stays leased until its lease runs
/// out (then redelivered, and dead-lettered after its redeliveries, its
/// record as it was). The whole reply failed before, and the next fetch
/// took the same batch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_record_it_cannot_read_does_not_hold_back_the_others() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            env.producer
                .enqueue(call(&format!("{{\"n\": {i}}}")))
                .await
                .unwrap()
                .job
                .id,
        );
    }
    let mut conn = admin_connection(&server).await;
    let rec: String = redis::cmd("HGET")
        .arg("runner:{work}:live")
        .arg(ids[1].to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    // A field this build does not know where it refuses unknown ones, or
    // else a record cut short.
    let unreadable = if rec.contains("\"limits\":{") {
        rec.replacen("\"limits\":{", "\"limits\":{\"from_a_newer_build\":1,", 1)
    } else {
        rec[..rec.len() / 2].to_string()
    };
    assert!(
        unreadable.starts_with("{\"state\":\"PENDING\""),
        "{unreadable}"
    );
    assert!(
        runner::queue::Job::from_json(&unreadable).is_err(),
        "{unreadable}"
    );
    let _: () = redis::cmd("HSET")
        .arg("runner:{work}:live")
        .arg(ids[1].to_string())
        .arg(&unreadable)
        .query_async(&mut conn)
        .await
        .unwrap();

    let got: Vec<_> = fetch(&env.broker, 3)
        .await
        .iter()
        .map(|d| d.job.id)
        .collect();
    assert_eq!(got, vec![ids[0], ids[2]]);
    // It is leased (not lost, not handed out again at once) and its record
    // is as it was.
    assert!(fetch(&env.broker, 3).await.is_empty());
    let kept: String = redis::cmd("HGET")
        .arg("runner:{work}:live")
        .arg(ids[1].to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, unreadable);
    let leased: Option<String> = redis::cmd("HGET")
        .arg("runner:{work}:leased")
        .arg(ids[1].to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(leased.is_some());
}

/// On Redis, a listing (dead letters, scheduled, running, `list`) with a
/// record this build cannot read shows the others and leaves that one
/// out (logged); before, the whole listing failed (a 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_listing_leaves_out_a_record_it_cannot_read() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut req = call(&format!("{{\"n\": {i}}}"));
        if i >= 4 {
            req.countdown_secs = Some(600.0);
        }
        ids.push(env.producer.enqueue(req).await.unwrap().job.id);
    }
    // 0 and 1 dead letters, 2 and 3 running, 4 and 5 scheduled.
    let leased = fetch(&env.broker, 4).await;
    assert_eq!(leased.len(), 4);
    settle_dead(&env.broker, &leased[..2]).await;
    // Cut short where each is kept: a final key or the `live` hash.
    let mut conn = admin_connection(&server).await;
    for id in [ids[0], ids[2], ids[4]] {
        if cut_final_record(&mut conn, id).await {
            continue;
        }
        let rec: String = redis::cmd("HGET")
            .arg("runner:{work}:live")
            .arg(id.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg("runner:{work}:live")
            .arg(id.to_string())
            .arg(&rec[..rec.len() / 2])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let b = &env.broker;
    let dead = b.dead_letters("work", 10).await.unwrap();
    assert_eq!(ids_of(&dead), vec![ids[1]]);
    let running = b.running("work").await.unwrap();
    assert_eq!(ids_of(&running), vec![ids[3]]);
    let scheduled = b.scheduled("work", 10).await.unwrap();
    assert_eq!(
        scheduled.iter().map(|(_, j)| j.id).collect::<Vec<_>>(),
        vec![ids[5]]
    );
    let mut listed = ids_of(&list_all(b, query(2)).await);
    listed.sort();
    let mut want = vec![ids[1], ids[3], ids[5]];
    want.sort();
    assert_eq!(listed, want);
}

/// Cuts job `id`'s final record (in queue `work`) short, so that this
/// build cannot read it; false when the job has no final record.
async fn cut_final_record(conn: &mut redis::aio::MultiplexedConnection, id: JobId) -> bool {
    let key = format!("runner:{{work}}:job:{id}");
    let fin: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await.unwrap();
    let Some(rec) = fin else {
        return false;
    };
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&rec[..rec.len() / 2])
        .arg("KEEPTTL")
        .query_async(conn)
        .await
        .unwrap();
    true
}

/// On Redis a dead letter whose record this build cannot read stays one
/// and the others are replayed: named by id (before, the whole replay
/// failed), or all of them behind more than a page of unreadable ones
/// (before, replay-all took a page with nothing to replay for the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replay_goes_past_dead_letters_it_cannot_read() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let req = call(&format!("{{\"n\": {i}}}"));
        ids.push(env.producer.enqueue(req).await.unwrap().job.id);
    }
    let leased = fetch(&env.broker, 3).await;
    assert_eq!(leased.len(), 3);
    settle_dead(&env.broker, &leased).await;
    let mut conn = admin_connection(&server).await;
    assert!(cut_final_record(&mut conn, ids[0]).await);
    let b = &env.broker;
    let replayed = b.replay("work", &[ids[0], ids[1]]).await.unwrap();
    assert_eq!(replayed, vec![ids[1]]);
    // More than a page (1,000) of unreadable dead letters, older than the
    // readable one left.
    let mut pipe = redis::pipe();
    for _ in 0..1_200 {
        let id = JobId::new();
        pipe.zadd("runner:{work}:dead", id.to_string(), 1)
            .ignore()
            .set_ex(format!("runner:{{work}}:job:{id}"), "{\"id\":", 600)
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    let replayed = b.replay("work", &[]).await.unwrap();
    assert_eq!(replayed, vec![ids[2]]);
    // The unreadable ones are still dead letters, ids[0] among them.
    let left: usize = redis::cmd("ZCARD")
        .arg("runner:{work}:dead")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 1_201);
    assert!(b.replay("work", &[]).await.unwrap().is_empty());
}

/// On Redis the first sample of a minute drops the minutes that left the
/// hour (their newest depth kept as `base`) and keeps the hash alive for
/// as long as it may matter: the Lua side of `history.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_history_forgets_minutes_older_than_the_hour() {
    let server = RedisServer::start();
    let env = redis_on(&server).await;
    let b = &env.broker;
    let mut conn = admin_connection(&server).await;
    let (secs, _): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let m = secs / 60;
    let key = "runner:{work}:hist";
    let old: Vec<(String, u64)> = vec![
        (format!("{}:depth", m - 100), 9),
        (format!("{}:running", m - 100), 1),
        (format!("{}:SUCCESS", m - 100), 50),
        (format!("{}:depth", m - 61), 7),
        (format!("{}:running", m - 61), 2),
        (format!("{}:FAILURE", m - 61), 4),
        (format!("{}:depth", m - 30), 3),
        (format!("{}:running", m - 30), 0),
        (format!("{}:SUCCESS", m - 30), 6),
    ];
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg(&old)
        .query_async(&mut conn)
        .await
        .unwrap();
    // A change this minute samples: a new minute for the hash.
    env.producer.enqueue(call("{}")).await.unwrap();
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    for (f, _) in &old[..6] {
        assert!(!fields.contains_key(f), "{f} outlived the hour: {fields:?}");
    }
    assert_eq!(
        fields.get("base").map(String::as_str),
        Some("7:2"),
        "{fields:?}"
    );
    assert_eq!(
        fields
            .get(&format!("{}:SUCCESS", m - 30))
            .map(String::as_str),
        Some("6")
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 60 * 60_000, "the hash lives past the hour: {ttl} ms");
    // The hour as shown: the base until the sample of 30 minutes ago,
    // then that one, then this minute's; what left the hour is not counted.
    let h = hour(b, "work").await;
    assert_eq!(h[0].waiting, Some(7), "{:?}", h[0]);
    assert_eq!(h[59 - 30].waiting, Some(3));
    assert_eq!(h[59].waiting, Some(1));
    assert_eq!(totals(&h), [1, 6, 0, 0, 0]);
}
