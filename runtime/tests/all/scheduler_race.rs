//! Exactly once across replicas: three schedulers race on one real Redis
//! over a beat that fires every second; one of them is killed half-way.
//! Every second gets exactly one job: no gap, no duplicate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use runner::queue::Job;
use runner::scheduler::{Beat, BeatStore, FireRecord, RedisBeatStore, fire_id};
use tempfile::TempDir;

use crate::redis_support::{RedisCluster, RedisServer};
use crate::scheduler::{QUEUE, bind_task, replica, take_jobs, take_jobs_from};
use crate::wiring::{Proc, toml_str, write_config};

/// Jobs per due time of beat `name`.
fn per_due(jobs: &[Job], name: &str) -> BTreeMap<DateTime<Utc>, usize> {
    let mut out = BTreeMap::new();
    for j in jobs.iter().filter(|j| j.schedule.as_deref() == Some(name)) {
        *out.entry(j.scheduled_for.expect("scheduled_for"))
            .or_default() += 1;
    }
    out
}

fn run_loop(r: &crate::scheduler::Replica) -> tokio::task::JoinHandle<()> {
    let s = r.scheduler.clone();
    tokio::spawn(async move { s.run(std::future::pending::<()>()).await })
}

/// Two replicas that disagree on a beat's queue (a rolling deploy of a
/// changed `runner.toml`; a beat moved between queues at a due instant)
/// still fire each due time once: the claim is on the beat and the due
/// time, not on the queue. Before, each replica's idempotency key lived in
/// its own queue and every second was fired twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_disagree_on_a_beats_queue_fire_it_once() {
    let server = RedisServer::start();
    let url = server.url();
    bind_task(&url, "tick").await;
    let beat = |queue: &str| Beat {
        queue: Some(queue.into()),
        ..Beat::cron("moving", "tick", "* * * * * *")
    };
    let a = replica(&url, vec![beat("old")]).await;
    let b = replica(&url, vec![beat("new")]).await;
    let loops = [run_loop(&a), run_loop(&b)];
    // Past the claim timeout, so that the losers' confirmations ran too.
    tokio::time::sleep(Duration::from_secs(9)).await;
    for l in &loops {
        l.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut jobs = take_jobs_from(&a.broker, "old").await;
    jobs.extend(take_jobs_from(&a.broker, "new").await);
    let fires = per_due(&jobs, "moving");
    let dups: Vec<_> = fires.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "fired more than once: {dups:?}");
    assert!(fires.len() >= 7, "only {} fires in 9 s", fires.len());
}

/// Claims the fire of beat `name` 2 s from now (a whole second) for
/// `queue`, as a replica that dies before its enqueue leaves it.
async fn claim_of_a_dead_replica(url: &str, name: &str, queue: &str) -> FireRecord {
    let due = DateTime::from_timestamp(Utc::now().timestamp() + 2, 0).unwrap();
    let claim = FireRecord {
        due,
        fired_at: due,
        job: fire_id(name, due),
        queue: queue.into(),
    };
    let store = RedisBeatStore::connect(url).await.unwrap();
    assert!(store.claim_fire(name, &claim).await.unwrap().is_none());
    claim
}

/// A beat re-timed (here its time zone) while a fire another replica
/// claimed is still to be checked keeps the check: that replica died
/// before its enqueue, and the fire is enqueued in its place. Before, the
/// entry rebuilt for the new timing dropped the check, and the fire was
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_fire_is_checked_after_the_beat_is_re_timed() {
    let server = RedisServer::start();
    let url = server.url();
    bind_task(&url, "tick").await;
    let claim = claim_of_a_dead_replica(&url, "ticker", QUEUE).await;
    let beat = Beat::cron("ticker", "tick", "* * * * * *");
    let r = replica(&url, vec![beat.clone()]).await;
    let l = run_loop(&r);
    // The due time passes (the check is set for 5 s after the claim), then
    // the beat changes.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    r.scheduler
        .put(Beat {
            timezone: "Europe/Paris".into(),
            ..beat
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    l.abort();
    let jobs = take_jobs_from(&r.broker, QUEUE).await;
    let fires = per_due(&jobs, "ticker");
    assert_eq!(fires.get(&claim.due), Some(&1), "{fires:?}");
    assert!(fires.values().all(|n| *n == 1), "{fires:?}");
}

/// A fire claimed by a replica that died before its enqueue is enqueued by
/// another in its place on a partitioned queue too, in the partition the
/// claim names. Before, the other asked the producer for the queue
/// `beats~i`, a name no caller may give: refused, and the fire was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_claimed_by_a_dead_replica_is_enqueued_on_a_partitioned_queue() {
    use runner::queue::partition::{Partitions, partition_name};
    let server = RedisServer::start();
    let url = server.url();
    bind_task(&url, "tick").await;
    let broker: Arc<dyn runner::queue::Broker> =
        Arc::new(runner::queue::RedisBroker::connect(&url).await.unwrap());
    let registry: Arc<dyn runner::registry::Registry> = Arc::new(
        runner::registry::RedisRegistry::connect(&url)
            .await
            .unwrap(),
    );
    let producer = runner::producer::Producer::new(broker.clone(), registry.clone())
        .with_partitions(Partitions::new([(QUEUE, 4)]).unwrap());
    // The dead replica's claim: a due time 2 s ahead, in partition 1.
    let claimed_in = partition_name(QUEUE, 1);
    let claim = claim_of_a_dead_replica(&url, "ticker", &claimed_in).await;
    let due = claim.due;
    let scheduler = runner::scheduler::Scheduler::connect_redis(
        &url,
        producer,
        registry,
        vec![Beat::cron("ticker", "tick", "* * * * * *")],
    )
    .await
    .unwrap();
    let r = crate::scheduler::Replica { scheduler, broker };
    let l = run_loop(&r);
    // Past the due time and the claim timeout (5 s).
    tokio::time::sleep(Duration::from_secs(9)).await;
    l.abort();
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.extend(take_jobs_from(&r.broker, &partition_name(QUEUE, i)).await);
    }
    let fired: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.scheduled_for == Some(due))
        .collect();
    assert_eq!(fired.len(), 1, "the claimed fire, once: {jobs:?}");
    assert_eq!(fired[0].queue, claimed_in);
    assert_eq!(fired[0].id, claim.job);
    assert!(per_due(&jobs, "ticker").len() >= 6, "{jobs:?}");
}

/// A replica paused (SIGSTOP) for less than the on-time grace does not
/// fire again, when it wakes, the due times the other replica fired while
/// it slept, even though their jobs ran and their records expired. Before,
/// a fire's key counted as free once its job's record was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_does_not_fire_again_what_another_fired() {
    let server = RedisServer::start();
    let url = server.url();
    bind_task(&url, "tick").await;
    let dir = TempDir::new().unwrap();
    let config = write_config(&dir, &format!("[broker]\nredis_url = {}\n", toml_str(&url)));
    let sleeper = Proc::start(&["scheduler"], &config);
    let a = replica(&url, vec![]).await;
    let a_loop = run_loop(&a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.scheduler
        .put(Beat::cron("pulse", "tick", "* * * * * *"))
        .await
        .unwrap();
    // The jobs run and their results expire at once: taken from the queue,
    // their records deleted.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut jobs = Vec::new();
    let mut drain = async |jobs: &mut Vec<Job>| {
        let taken = take_jobs(&a.broker).await;
        for j in &taken {
            // A leased job's record is in `live`; a final one in `job:<id>`.
            let _: () = redis::pipe()
                .cmd("DEL")
                .arg(format!("runner:{{{QUEUE}}}:job:{}", j.id))
                .ignore()
                .cmd("HDEL")
                .arg(format!("runner:{{{QUEUE}}}:live"))
                .arg(j.id.to_string())
                .ignore()
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        jobs.extend(taken);
    };
    let phases = [
        (3, None),
        (3, Some(libc::SIGSTOP)),
        (3, Some(libc::SIGCONT)),
    ];
    for (secs, signal) in phases {
        if let Some(sig) = signal {
            sleeper.signal(sig);
        }
        for _ in 0..secs * 10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drain(&mut jobs).await;
        }
    }
    a_loop.abort();
    drop(sleeper);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drain(&mut jobs).await;
    let fires = per_due(&jobs, "pulse");
    let dups: Vec<_> = fires.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "fired more than once: {dups:?}");
    assert!(fires.len() >= 7, "only {} fires in ~9 s", fires.len());
}

/// Redis answering READONLY (a replica, as during a failover) is an
/// outage, not a refusal: the fire is retried and lands once the server
/// is promoted, and the producer's error is one the API answers with 503.
/// Before, READONLY was taken as a refusal and the fire was skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_redis_delays_fires_and_loses_none() {
    let master = RedisServer::start();
    let server = RedisServer::start();
    let url = server.url();
    bind_task(&master.url(), "tick").await;
    let port = master
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = replica(&url, vec![Beat::cron("failover", "tick", "* * * * * *")]).await;
    // The binding reaches the replica.
    let registry = runner::registry::RedisRegistry::connect(&url)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while runner::registry::Registry::task(&registry, "tick")
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "replication did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let producer = runner::producer::Producer::new(
        r.broker.clone(),
        Arc::new(registry) as Arc<dyn runner::registry::Registry>,
    );
    let err = producer
        .enqueue(runner::producer::EnqueueRequest::task("tick", "{}"))
        .await
        .unwrap_err();
    let api = runner::api::ApiError::from(err);
    assert_eq!(api.status.as_u16(), 503, "{}", api.message);

    let l = run_loop(&r);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let queued: bool = redis::cmd("EXISTS")
        .arg(format!("runner:{{{QUEUE}}}:ready"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!queued, "a job was queued on a read-only server");
    let promoted_at = Utc::now();
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    l.abort();
    let fires = per_due(&take_jobs(&r.broker).await, "failover");
    let first = *fires
        .keys()
        .next()
        .expect("nothing fired after the promotion");
    assert!(
        first <= promoted_at - chrono::Duration::seconds(1),
        "the fires due while Redis was read-only were skipped: first {first}, promoted at {promoted_at}"
    );
    assert!(fires.values().all(|n| *n == 1), "{fires:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_fire_each_second_exactly_once() {
    let server = RedisServer::start();
    each_second_exactly_once(&server.url()).await;
}

/// The same race on a Redis Cluster of three masters: the beats, their
/// fire claims and the queue live in different slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_cluster_fire_each_second_exactly_once() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap();
    each_second_exactly_once(&cluster.url()).await;
}

/// Three replicas on `url`; one is killed (its task aborted) halfway:
/// every second fires once, without gaps.
async fn each_second_exactly_once(url: &str) {
    let url = url.to_string();
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
