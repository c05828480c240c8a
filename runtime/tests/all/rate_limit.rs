//! A global rate limit shared by two workers on two Redis connections.

use std::time::Duration;

use runner::queue::{EnqueueRequest, JobState};

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
