//! A global rate limit shared by two workers on two Redis connections.

use std::time::Duration;

use runner::producer::EnqueueRequest;
use runner::queue::JobState;

use crate::worker::{Env, cfg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_per_two_seconds_across_two_workers() {
    let env = Env::redis().await;
    env.bind("limited", "hello", "mail", |b| {
        b.rate_limit = Some("5/2s".into())
    })
    .await;
    let a = env.worker(cfg(&["mail"], 4)).await;
    let b = env.worker(cfg(&["mail"], 4)).await;
    let reqs = (0..17)
        .map(|i| EnqueueRequest::task("limited", format!(r#"{{"name":"n{i}"}}"#)))
        .collect();
    let ids: Vec<_> = env
        .producer
        .enqueue_batch(reqs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    let mut starts = Vec::new();
    for id in &ids {
        let j = env
            .broker
            .wait(*id, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            j.state,
            JobState::Success,
            "limited jobs wait, they are not dropped: {j:?}"
        );
        starts.push(j.started_at.unwrap().timestamp_millis());
    }
    starts.sort();
    for (i, &s) in starts.iter().enumerate() {
        let n = starts[i..].iter().take_while(|&&t| t < s + 2000).count();
        assert!(n <= 5, "{n} starts in the 2 s from {s}: {starts:?}");
    }
    a.stop().await;
    b.stop().await;
}

/// Jobs of a limited task fill the front of a queue; an unlimited job behind
/// them runs at once. (A fetch whose every job was deferred does not mean
/// the queue is empty: the worker fetches again instead of sleeping until
/// the limit's next window.)
async fn unlimited_job_behind_deferred_ones_runs_at_once(env: Env) {
    env.bind("limited", "hello", "mail", |b| {
        b.rate_limit = Some("1/m".into())
    })
    .await;
    env.bind("free", "hello", "mail", |_| {}).await;
    let mut reqs: Vec<EnqueueRequest> = (0..60)
        .map(|i| EnqueueRequest::task("limited", format!(r#"{{"name":"l{i}"}}"#)))
        .collect();
    reqs.push(EnqueueRequest::task(
        "free",
        r#"{"name":"free"}"#.to_string(),
    ));
    let enqueued = env.producer.enqueue_batch(reqs).await.unwrap();
    let free = enqueued.last().unwrap().job.id;
    let w = env.worker(cfg(&["mail"], 2)).await;
    // Well inside the limit's one-minute window: a worker that slept until
    // the window's end would not have run it yet.
    let j = env
        .broker
        .wait(free, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.state, JobState::Success, "{j:?}");
    let stats = env.broker.queues().await.unwrap();
    let mail = stats.iter().find(|q| q.name == "mail").unwrap();
    assert_eq!(mail.ready, 0, "every limited job was examined: {mail:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_job_behind_deferred_ones_runs_at_once_on_redis() {
    unlimited_job_behind_deferred_ones_runs_at_once(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_job_behind_deferred_ones_runs_at_once_embedded() {
    unlimited_job_behind_deferred_ones_runs_at_once(Env::embedded().await).await;
}

/// A task's rate limit counts its starts per queue, on both brokers (see
/// `queue/ratelimit.rs`): with `1/m`, one job starts in each of two queues
/// at once and the second job of the first queue waits for the window.
async fn task_rate_limit_counts_per_queue(env: Env) {
    env.bind("limited", "hello", "a", |b| {
        b.rate_limit = Some("1/m".into())
    })
    .await;
    let on = |queue: &str, name: &str| EnqueueRequest {
        queue: Some(queue.into()),
        ..EnqueueRequest::task("limited", format!(r#"{{"name":"{name}"}}"#))
    };
    let enqueued = env
        .producer
        .enqueue_batch(vec![on("a", "a1"), on("a", "a2"), on("b", "b1")])
        .await
        .unwrap();
    let ids: Vec<_> = enqueued.iter().map(|e| e.job.id).collect();
    let w = env.worker(cfg(&["a", "b"], 2)).await;
    let b1 = env
        .broker
        .wait(ids[2], Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b1.state,
        JobState::Success,
        "queue b has its own log: {b1:?}"
    );
    let a1 = env
        .broker
        .wait(ids[0], Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a1.state, JobState::Success, "{a1:?}");
    let a2 = env.broker.get(ids[1]).await.unwrap().unwrap();
    assert!(
        !a2.state.is_final() && a2.started_at.is_none(),
        "the second job of queue a waits for the window: {a2:?}"
    );
    let stats = env.broker.queues().await.unwrap();
    let a = stats.iter().find(|q| q.name == "a").unwrap();
    assert_eq!(a.delayed, 1, "{a:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_rate_limit_counts_per_queue_on_redis() {
    task_rate_limit_counts_per_queue(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_rate_limit_counts_per_queue_embedded() {
    task_rate_limit_counts_per_queue(Env::embedded().await).await;
}

/// A run stopped by its worker's shutdown (the grace over) goes back to
/// its queue to run again, but it did start: its start stays in the
/// task's rate-limit log. Before, the hand-back withdrew it as for a job
/// leased ahead and never run, and another job of the task could start
/// in the same window.
async fn a_run_stopped_by_shutdown_still_counts_against_its_rate_limit(env: Env) {
    env.bind("sleepy", "sleeper", "default", |b| {
        b.rate_limit = Some("1/h".into());
        b.limits.time_limit_ms = Some(60_000);
    })
    .await;
    let mut config = cfg(&["default"], 1);
    config.grace = Duration::from_millis(500);
    let w = env.worker(config).await;
    let mut events = env.broker.subscribe().await.unwrap();
    let id = env.enqueue("sleepy", r#"{"ms":30000}"#).await;
    crate::worker::wait_started(&mut events, id).await;
    // (Leased is not yet running: give the run time to start.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.stop().await;
    let j = env.broker.get(id).await.unwrap().unwrap();
    assert!(!j.state.is_final(), "handed back to run again: {j:?}");
    let usage = [runner::queue::RateLimit {
        key: "task:sleepy".into(),
        count: 1,
        period_ms: 3_600_000,
    }];
    assert_eq!(
        env.broker.rate_usage("default", &usage).await.unwrap(),
        vec![1],
        "the start that ran is still counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_shutdown_still_counts_against_its_rate_limit_on_redis() {
    a_run_stopped_by_shutdown_still_counts_against_its_rate_limit(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_shutdown_still_counts_against_its_rate_limit_embedded() {
    a_run_stopped_by_shutdown_still_counts_against_its_rate_limit(Env::embedded().await).await;
}
