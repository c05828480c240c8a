//! Exactly once across replicas: three schedulers race on one real Redis
//! over a beat that fires every second; one of them is killed half-way.
//! Every second gets exactly one job: no gap, no duplicate.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use runner::scheduler::Beat;

use crate::redis_support::RedisServer;
use crate::scheduler::{bind_task, replica, take_jobs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fire_each_second_exactly_once() {
    let server = RedisServer::start();
    let url = server.url();
    bind_task(&url, "tick").await;

    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&url, vec![]).await);
    }
    let mut loops = Vec::new();
    for r in &replicas {
        let s = r.scheduler.clone();
        loops.push(tokio::spawn(async move {
            s.run(std::future::pending::<()>()).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Utc::now();
    replicas[1]
        .scheduler
        .put(Beat::cron("race", "tick", "* * * * * *"))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_secs(10)).await;
    // A crash, not a shutdown: the task is dropped wherever it is, possibly
    // in the middle of an enqueue.
    loops[0].abort();
    let killed_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let stopped = Utc::now();
    for l in &loops[1..] {
        l.abort();
    }
    // Let an enqueue that was in flight land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let jobs = take_jobs(&replicas[2].broker).await;
    let mut per_second: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for j in jobs
        .iter()
        .filter(|j| j.schedule.as_deref() == Some("race"))
    {
        *per_second
            .entry(j.scheduled_for.expect("scheduled_for"))
            .or_default() += 1;
    }
    let dups: Vec<_> = per_second.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "fired more than once: {dups:?}");

    let first = *per_second.keys().next().expect("no job at all");
    let last = *per_second.keys().last().unwrap();
    let span = (last - first).num_seconds() + 1;
    let gaps: Vec<_> = per_second
        .keys()
        .zip(per_second.keys().skip(1))
        .filter(|(a, b)| (**b - **a).num_seconds() != 1)
        .collect();
    assert!(gaps.is_empty(), "gaps between fires: {gaps:?}");
    assert_eq!(per_second.len() as i64, span);
    // The first second after the beat was created fired, and fires went on
    // well past the kill until the end.
    assert!(
        first <= started + chrono::Duration::seconds(2),
        "first fire {first}, put at {started}"
    );
    assert!(
        last >= killed_at + chrono::Duration::seconds(5),
        "last fire {last}, killed at {killed_at}"
    );
    assert!(
        per_second.len() >= 17,
        "only {} fires in ~20 s",
        per_second.len()
    );
    assert!(last <= stopped + chrono::Duration::seconds(1));

    // The shared record of the newest fire agrees with the jobs.
    let status = replicas[2].scheduler.get("race").await.unwrap();
    assert!(status.last_fire.unwrap().due.utc >= last - chrono::Duration::seconds(1));
}
