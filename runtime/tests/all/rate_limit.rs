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
