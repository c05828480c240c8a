//! The runner on a Redis Cluster end to end: a real worker and sandbox,
//! the registry and the broker on three masters with a replica each, as
//! the ACL user of `deploy/redis-users.acl`. The broker's own contract on a
//! cluster is `queue_conformance::redis_cluster`.

use std::sync::Arc;
use std::time::Duration;

use runner::producer::{EnqueueRequest, Producer};
use runner::queue::{Broker, JobId, JobState, RedisBroker};
use runner::registry::{RedisRegistry, Registry, TaskBinding};
use runner::sandbox::host::HostServices;

use crate::redis_support::RedisCluster;
use crate::support::guest_bytes;
use crate::worker::{cfg, start_worker_with, wait_final};

async fn start_cluster(masters: usize, replicas: usize) -> RedisCluster {
    let acl = crate::redis_tls::runner_acl("cluster-tests");
    tokio::task::spawn_blocking(move || RedisCluster::start_with_acl(masters, replicas, &acl))
        .await
        .unwrap()
}

async fn connect(cluster: &RedisCluster) -> RedisBroker {
    RedisBroker::connect(&cluster.url_as("runner", "cluster-tests"))
        .await
        .unwrap()
}

/// The registry, the broker and a producer on `b`, with `hello` bound to
/// each (task, queue) of `tasks`.
async fn deploy(
    b: RedisBroker,
    tasks: &[(&str, &str)],
) -> (Arc<dyn Registry>, Arc<dyn Broker>, Producer) {
    let registry: Arc<dyn Registry> = Arc::new(RedisRegistry::new(b.connection()));
    let broker: Arc<dyn Broker> = Arc::new(b);
    let producer = Producer::new(broker.clone(), registry.clone());
    let hash = registry.put_module(&guest_bytes("hello")).await.unwrap();
    for (task, queue) in tasks {
        let mut t = TaskBinding::new(*task, hash);
        t.queue = queue.to_string();
        registry.bind(t).await.unwrap();
    }
    (registry, broker, producer)
}

/// Enqueues `n` hello jobs on each task of `tasks`, repeating a call that
/// fails (as a client would while a master fails over); the ids the
/// broker accepted.
async fn enqueue(producer: &Producer, tasks: &[&str], n: usize, from: usize) -> Vec<JobId> {
    let mut ids = Vec::new();
    for i in from..from + n {
        for task in tasks {
            let req = || EnqueueRequest::task(*task, format!(r#"{{"name":"n{i}"}}"#));
            let mut tries = 0;
            let id = loop {
                match producer.enqueue(req()).await {
                    Ok(e) => break e.job.id,
                    Err(e) => {
                        tries += 1;
                        assert!(tries < 100, "enqueue kept failing: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            ids.push(id);
        }
    }
    ids
}

/// Two queues on a cluster of three masters and their replicas; the master
/// that holds the first queue is killed (SIGKILL) while the worker runs its
/// jobs. Its replica takes over, the worker and the producer follow it, and
/// every job enqueued before the kill (once replicated) and after it ends
/// in success: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_that_dies_mid_run_loses_no_job() {
    let mut cluster = start_cluster(3, 1).await;
    let tasks = [("hello_a", "alpha"), ("hello_b", "beta")];
    let (registry, broker, producer) = deploy(connect(&cluster).await, &tasks).await;
    let mut w_cfg = cfg(&["alpha", "beta"], 4);
    w_cfg.lease = Duration::from_secs(3);
    let worker = start_worker_with(
        Arc::new(connect(&cluster).await),
        registry.clone(),
        HostServices::default(),
        w_cfg,
    );

    let mut ids = enqueue(&producer, &["hello_a", "hello_b"], 150, 0).await;
    // Redis replicates asynchronously: what a master acknowledged but had
    // not sent to its replica dies with it (docs/scaling.md). Once the
    // replicas hold the enqueued jobs, none of them may be lost.
    tokio::task::block_in_place(|| cluster.wait_replicated());
    let victim = cluster.master_of("runner:{alpha}:ready");
    tokio::task::block_in_place(|| cluster.kill(victim));
    // Enqueued while the slot has no master, then after the replica took
    // over: accepted only once the new master stored them.
    ids.extend(enqueue(&producer, &["hello_a", "hello_b"], 50, 150).await);
    tokio::task::block_in_place(|| cluster.wait_failover("runner:{alpha}:ready", victim));
    ids.extend(enqueue(&producer, &["hello_a", "hello_b"], 100, 200).await);
    assert_eq!(ids.len(), 600);

    for id in &ids {
        let j = wait_final(&broker, *id).await;
        assert_eq!(j.state, JobState::Success, "{j:?}");
        assert!(
            j.result_value().unwrap()["greeting"]
                .as_str()
                .unwrap()
                .starts_with("Hello, n"),
            "{j:?}"
        );
    }
    let stats = worker.stop().await;
    assert!(stats.succeeded >= 600, "{stats:?}");
}

/// The broker's scripts start with a `#!lua` shebang, which makes a
/// cluster refuse a script that touches a key outside the slot of its
/// first key, even where both slots are on one node; a script without
/// one is let through there. So the conformance suite on a cluster
/// (`queue_conformance::redis_cluster`) shows that no script strays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_strays_from_its_slot_is_refused() {
    use redis::cluster_routing::Slot;
    let cluster = start_cluster(3, 0).await;
    let mut conn = connect(&cluster).await.connection();
    let home = "runner:{work}:x";
    let master = cluster.master_of(home);
    let stray = (0..1000)
        .map(|i| format!("runner:{{other{i}}}:x"))
        .find(|k| Slot::for_key(k) != Slot::for_key(home) && cluster.master_of(k) == master)
        .expect("another slot on the same master");
    let body = format!("redis.call('SET', KEYS[1], 1)\nreturn redis.call('GET', '{stray}')");

    let strict = redis::Script::new(&format!("#!lua\n{body}"));
    let e = strict
        .key(home)
        .invoke_async::<Option<String>>(&mut conn)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("do not hash to the same slot"),
        "{e}"
    );
    let legacy = redis::Script::new(&body);
    assert_eq!(
        legacy
            .key(home)
            .invoke_async::<Option<String>>(&mut conn)
            .await
            .unwrap(),
        None
    );
}

/// `runner serve`, `runner worker` and `runner scheduler`, each its own
/// process, on a cluster of three masters as the ACL user: the API binds
/// at start, runs a job and a kv job through the worker, lists workers,
/// queues and jobs (reads of several slots), and the scheduler's beat
/// fires and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processes_run_everything_on_a_cluster() {
    use runner::app::Core;
    use serde_json::{Value, json};

    use crate::redis_support::free_port;
    use crate::support::{guest, sandbox};
    use crate::wiring::{ApiProc, beat_ran, start_deployment, toml_str};

    const TOKEN: &str = "cluster-admin-token";
    let cluster = start_cluster(3, 0).await;
    let dir = tempfile::TempDir::new().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "[server]\nlisten = {}\n\n[auth]\nadmin = [{}]\n\n[broker]\nredis_url = {}\n\n\
         [host.kv]\n\n\
         [tasks.hello]\nmodule = {}\n\n\
         [tasks.guard]\nmodule = {}\n[tasks.guard.grants]\nkv = {{}}\n\n\
         [[beats]]\nname = \"tick\"\ntask = \"hello\"\nevery = \"1s\"\ninput = {{ name = \"beat\" }}\n",
        toml_str(&listen),
        toml_str(TOKEN),
        toml_str(&cluster.url_as("runner", "cluster-tests")),
        toml_str(guest("hello").to_str().unwrap()),
        toml_str(guest("kv_guard").to_str().unwrap()),
    );
    let deployed = start_deployment(&dir, &text);

    let api = ApiProc::new(&listen, TOKEN);
    let json_of = |(s, body): (reqwest::StatusCode, String)| {
        assert_eq!(s, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    tokio::task::block_in_place(|| {
        let job = api.run("hello", json!({ "name": "Cluster" }));
        assert_eq!(job["state"], "SUCCESS", "{job}");
        assert_eq!(job["result"]["greeting"], "Hello, Cluster!", "{job}");
        let first = api.run("guard", json!({ "key": "once" }));
        assert_eq!(first["state"], "SUCCESS", "{first}");
        let second = api.run("guard", json!({ "key": "once" }));
        assert_eq!(second["state"], "SUCCESS", "{second}");
        assert_ne!(first["result"], second["result"], "the kv guard remembers");
        let workers = json_of(api.call(reqwest::Method::GET, "/v1/workers", None));
        assert!(workers.to_string().contains("\"queues\""), "{workers}");
        let queues = json_of(api.call(reqwest::Method::GET, "/v1/queues", None));
        assert!(queues.to_string().contains("\"default\""), "{queues}");
        let jobs = json_of(api.call(reqwest::Method::GET, "/v1/jobs?limit=10", None));
        assert!(jobs.to_string().contains("Hello, Cluster!"), "{jobs}");
    });

    // The scheduler process fired the beat, and the worker ran it.
    let core = Core::open(&deployed.config, sandbox()).await.unwrap();
    let job = beat_ran(&core, "tick").await;
    assert_eq!(job.state, JobState::Success, "{job:?}");
}

/// `rediss+cluster://`: a cluster whose nodes speak TLS to clients and to
/// each other, reached with the test CA; scripts and pub/sub go over TLS
/// (two cases of the conformance suite: a job's whole life, and a wait
/// woken by the job's end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_runs_the_broker() {
    use runner::queue::redis::RedisTls;
    use runner_test_support::ClusterTls;

    let certs = crate::redis_tls::Certs::new();
    let files = RedisTls {
        ca: Some(certs.path("ca.pem")),
        ..RedisTls::default()
    };
    for case in 0..2 {
        let tls = ClusterTls {
            cert: certs.path("server.pem"),
            key: certs.path("server.key"),
            ca: certs.path("ca.pem"),
        };
        let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_with_tls(3, &tls))
            .await
            .unwrap();
        let url = cluster.tls_url();
        assert!(url.starts_with("rediss+cluster://"), "{url}");
        let broker = RedisBroker::connect_with(&url, &files).await.unwrap();
        let env = crate::queue_conformance::on_cluster(broker, cluster).await;
        if case == 0 {
            crate::queue_conformance::enqueue_lease_and_succeed(env).await;
        } else {
            crate::queue_conformance::wait_is_woken_by_the_end(env).await;
        }
    }
}

/// The subscribers of shard channel `chan` on node `port` (`PUBSUB
/// SHARDNUMSUB`), and of patterns (`PUBSUB NUMPAT`).
fn subscribers(cluster: &RedisCluster, port: u16, chan: &str) -> (i64, i64) {
    let node = cluster.nodes.iter().find(|n| n.port == port).unwrap();
    let shard: std::collections::HashMap<String, i64> = node
        .query(redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(chan))
        .unwrap();
    let patterns: i64 = node.query(redis::cmd("PUBSUB").arg("NUMPAT")).unwrap();
    (shard.get(chan).copied().unwrap_or(0), patterns)
}

/// Until the end event of job `id` reaches `events` (a gap is not enough:
/// this checks that the feed hears the queue's channel).
async fn hear_end(
    events: &mut tokio::sync::broadcast::Receiver<runner::queue::JobEvent>,
    id: JobId,
) {
    use tokio::sync::broadcast::error::RecvError;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match events.recv().await {
                Ok(ev) if ev.id == id && ev.state.is_final() => {
                    assert_eq!(ev.state, JobState::Success, "{ev:?}");
                    return;
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("the event feed closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no end event for job {id}"));
}

/// `hello_a` on queue alpha, with one job enqueued before the event feed
/// starts (so the feed subscribes the queue then) and run by a worker,
/// its end heard: the producer, the feed and the worker.
async fn alpha_heard(
    cluster: &RedisCluster,
) -> (
    Producer,
    tokio::sync::broadcast::Receiver<runner::queue::JobEvent>,
    crate::worker::RunningWorker,
) {
    let (registry, broker, producer) =
        deploy(connect(cluster).await, &[("hello_a", "alpha")]).await;
    let first = enqueue(&producer, &["hello_a"], 1, 0).await[0];
    let mut events = broker.subscribe().await.unwrap();
    let worker = start_worker_with(
        Arc::new(connect(cluster).await),
        registry,
        HostServices::default(),
        cfg(&["alpha"], 2),
    );
    hear_end(&mut events, first).await;
    (producer, events, worker)
}

/// On a cluster, a queue's events go over sharded pub/sub: the worker and
/// the event feed subscribe the queue's shard channel on the master of
/// the queue's slot, and nobody subscribes a pattern (which every node
/// would relay). When that master dies, both subscriptions follow the slot
/// to the replica that takes over: a job enqueued after the fail-over is
/// run by the worker and its end reaches the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_events_stay_on_their_shard_through_a_failover() {
    let mut cluster = start_cluster(3, 1).await;
    let (producer, mut events, worker) = alpha_heard(&cluster).await;

    let chan = "runner:{alpha}:ev";
    let master = cluster.master_of("runner:{alpha}:ready");
    assert_eq!(
        subscribers(&cluster, master, chan),
        (2, 0),
        "the worker and the feed"
    );
    for n in cluster.nodes.iter().filter(|n| n.port != master) {
        assert_eq!(subscribers(&cluster, n.port, chan).1, 0, "node {}", n.port);
    }

    tokio::task::block_in_place(|| cluster.kill(master));
    tokio::task::block_in_place(|| cluster.wait_failover("runner:{alpha}:ready", master));
    let after = enqueue(&producer, &["hello_a"], 1, 1).await[0];
    hear_end(&mut events, after).await;
    let new_master = cluster.master_of("runner:{alpha}:ready");
    assert_ne!(new_master, master);
    // Both subscriptions came back on their own (the worker's may take
    // a moment after the feed's).
    let mut subs = (0, 0);
    for _ in 0..200 {
        subs = subscribers(&cluster, new_master, chan);
        if subs.0 == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(subs, (2, 0), "the worker and the feed on the new master");
    let stats = worker.stop().await;
    assert!(stats.succeeded >= 2, "{stats:?}");
}

/// `?pubsub=classic` keeps a cluster's queue events on classic pub/sub
/// (servers before Redis 7): the feed subscribes its pattern, no shard
/// channel has a subscriber, and jobs run as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_url_can_keep_classic_pub_sub() {
    let cluster = start_cluster(3, 0).await;
    let url = format!(
        "{}?pubsub=classic",
        cluster.url_as("runner", "cluster-tests")
    );
    let b = RedisBroker::connect(&url).await.unwrap();
    let (registry, broker, producer) = deploy(b, &[("hello_a", "alpha")]).await;
    let mut events = broker.subscribe().await.unwrap();
    let worker = start_worker_with(
        Arc::new(RedisBroker::connect(&url).await.unwrap()),
        registry.clone(),
        HostServices::default(),
        cfg(&["alpha"], 2),
    );
    let id = enqueue(&producer, &["hello_a"], 1, 0).await[0];
    hear_end(&mut events, id).await;
    let master = cluster.master_of("runner:{alpha}:ready");
    let patterns: i64 = cluster
        .nodes
        .iter()
        .map(|n| subscribers(&cluster, n.port, "runner:{alpha}:ev"))
        .map(|(shard, patterns)| {
            assert_eq!(shard, 0);
            patterns
        })
        .sum();
    assert_eq!(
        patterns, 1,
        "the feed's pattern, on one node (master {master})"
    );
    worker.stop().await;
}

/// A cluster whose ACL user predates sharded pub/sub (no `+ssubscribe`,
/// `+spublish`): subscribing to queue events fails with an error that says
/// what is missing and what to do, and the same user works with
/// `?pubsub=classic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_without_sharded_pub_sub_is_explained() {
    let acl = crate::redis_tls::runner_acl("cluster-tests")
        .replace(" +spublish +ssubscribe +sunsubscribe", "");
    assert!(!acl.contains("ssubscribe"), "{acl}");
    let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_with_acl(3, 0, &acl))
        .await
        .unwrap();
    let url = cluster.url_as("runner", "cluster-tests");
    let sharded = RedisBroker::connect(&url).await.unwrap();
    // A queue the event feed subscribes to when it starts.
    let _: u64 = redis::cmd("SADD")
        .arg("runner:queues")
        .arg("alpha")
        .query_async(&mut sharded.connection())
        .await
        .unwrap();
    let e = sharded.subscribe().await.unwrap_err().to_string();
    assert!(
        e.contains("+ssubscribe") && e.contains("?pubsub=classic"),
        "{e}"
    );
    let e = sharded
        .signals("w-1", &["alpha".to_string()])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("?pubsub=classic"), "{e}");

    let classic = RedisBroker::connect(&format!("{url}?pubsub=classic"))
        .await
        .unwrap();
    classic.subscribe().await.unwrap();
    classic
        .signals("w-1", &["alpha".to_string()])
        .await
        .unwrap();
}

/// Moves the slot of `key` from its master to the master on `to`, keys and
/// all, as `redis-cli --cluster reshard` does (`SETSLOT IMPORTING` and
/// `MIGRATING`, `MIGRATE` of its keys, then `SETSLOT NODE` on every master).
fn move_slot(cluster: &RedisCluster, key: &str, to: u16) {
    let node = |port: u16| cluster.nodes.iter().find(|n| n.port == port).unwrap();
    let id = |port: u16| -> String { node(port).query(redis::cmd("CLUSTER").arg("MYID")).unwrap() };
    let from = cluster.master_of(key);
    let slot: u16 = node(from)
        .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
        .unwrap();
    let (from_id, to_id) = (id(from), id(to));
    let setslot = |port: u16, how: &str, who: &str| {
        let _: () = node(port)
            .query(
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(how)
                    .arg(who),
            )
            .unwrap();
    };
    setslot(to, "IMPORTING", &from_id);
    setslot(from, "MIGRATING", &to_id);
    loop {
        let keys: Vec<String> = node(from)
            .query(
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = node(from)
            .query(
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(to)
                    .arg("")
                    .arg(0)
                    .arg(5000)
                    .arg("KEYS")
                    .arg(&keys),
            )
            .unwrap();
    }
    for n in cluster.nodes.iter().filter(|n| n.alive()) {
        setslot(n.port, "NODE", &to_id);
    }
}

/// A queue's slot moved to another master (resharding): its old master
/// tells its subscribers the channel is gone (`sunsubscribe`), and the
/// worker and the event feed subscribe it again on the new master, where
/// the next job's events are heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_events_follow_a_slot_that_moves() {
    let cluster = start_cluster(3, 0).await;
    let (producer, mut events, worker) = alpha_heard(&cluster).await;

    let (key, chan) = ("runner:{alpha}:ready", "runner:{alpha}:ev");
    let from = cluster.master_of(key);
    assert_eq!(subscribers(&cluster, from, chan).0, 2);
    let to = cluster
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|&p| p != from)
        .unwrap();
    tokio::task::block_in_place(|| move_slot(&cluster, key, to));
    assert_eq!(cluster.master_of(key), to);
    let mut subs = 0;
    for _ in 0..200 {
        subs = subscribers(&cluster, to, chan).0;
        if subs == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(subs, 2, "the worker and the feed on the slot's new master");
    assert_eq!(subscribers(&cluster, from, chan).0, 0);
    let after = enqueue(&producer, &["hello_a"], 1, 1).await[0];
    hear_end(&mut events, after).await;
    let stats = worker.stop().await;
    assert!(stats.succeeded >= 2, "{stats:?}");
}

/// One hot queue split into 8 partitions (`[queues.hot] partitions = 8`)
/// on a cluster of three masters: the producer spreads the jobs over all
/// 8, their keys live on more than one master, and a worker consuming the
/// queue (all its partitions) runs every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_queue_spreads_over_the_masters() {
    use runner::queue::partition::Partitions;
    let cluster = start_cluster(3, 0).await;
    let (registry, broker, producer) =
        deploy(connect(&cluster).await, &[("hello_hot", "hot")]).await;
    let split = Partitions::new([("hot", 8)]).unwrap();
    let producer = producer.with_partitions(split.clone());
    let consumed = split.expand(&["hot".to_string()]);
    assert_eq!(consumed.len(), 9, "hot and its 8 partitions: {consumed:?}");
    let queues: Vec<&str> = consumed.iter().map(String::as_str).collect();
    let worker = start_worker_with(
        Arc::new(connect(&cluster).await),
        registry,
        HostServices::default(),
        cfg(&queues, 4),
    );
    let ids = enqueue(&producer, &["hello_hot"], 200, 0).await;
    let mut used = std::collections::BTreeSet::new();
    for id in &ids {
        let j = wait_final(&broker, *id).await;
        assert_eq!(j.state, JobState::Success, "{j:?}");
        used.insert(j.queue.clone());
    }
    let expected: std::collections::BTreeSet<String> = consumed[1..].iter().cloned().collect();
    assert_eq!(used, expected);
    let masters: std::collections::BTreeSet<u16> = used
        .iter()
        .map(|q| cluster.master_of(&format!("runner:{{{q}}}:ready")))
        .collect();
    assert!(masters.len() >= 2, "{masters:?}");
    let stats = worker.stop().await;
    assert_eq!(stats.succeeded, 200, "{stats:?}");
}

/// A process that enqueues to a queue its event feed has not heard of
/// (the queue's announcement has not reached it) subscribes that queue's
/// shard channel first: a caller that subscribed, then enqueued, hears
/// the job start and end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_hears_the_queues_its_process_enqueues_to() {
    let cluster = start_cluster(3, 0).await;
    let b = connect(&cluster).await;
    let mut conn = b.connection();
    let (registry, broker, producer) = deploy(b, &[("hello_fresh", "fresh")]).await;
    let mut events = broker.subscribe().await.unwrap();
    // Known to the cluster, as when another process just made it, but its
    // announcement never reaches this feed.
    let _: u64 = redis::cmd("SADD")
        .arg("runner:queues")
        .arg("fresh")
        .query_async(&mut conn)
        .await
        .unwrap();
    let worker = start_worker_with(
        Arc::new(connect(&cluster).await),
        registry,
        HostServices::default(),
        cfg(&["fresh"], 1),
    );
    let id = enqueue(&producer, &["hello_fresh"], 1, 0).await[0];
    crate::worker::wait_started(&mut events, id).await;
    let j = wait_final(&broker, id).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    worker.stop().await;
}

/// A feed that missed a queue's announcement (it came while the feed was
/// cut off, or the process that made the queue failed to send it) finds
/// the queue at its next check, subscribes its channel and says that
/// events may have been missed; from then on it hears the queue's jobs.
/// Before, it never heard them until it was started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_finds_a_queue_whose_announcement_it_missed() {
    let cluster = start_cluster(3, 0).await;
    // The event feed of one process (an API), checking every second.
    let live = runner::queue::redis::Liveness {
        every: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    };
    let api = connect(&cluster).await.with_liveness(live);
    let mut conn = api.connection();
    let mut events = api.subscribe().await.unwrap();
    // Known to the cluster, as when another process made it, but never
    // announced.
    let _: u64 = redis::cmd("SADD")
        .arg("runner:queues")
        .arg("quiet")
        .query_async(&mut conn)
        .await
        .unwrap();
    let chan = "runner:{quiet}:ev";
    let master = cluster.master_of("runner:{quiet}:ready");
    tokio::time::timeout(Duration::from_secs(30), async {
        while subscribers(&cluster, master, chan).0 < 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the feed subscribes the queue's channel");
    // Told that events may have been missed.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !events.recv().await.unwrap().is_gap() {}
    })
    .await
    .expect("a gap after the queue was found");
    // Another process enqueues there, and a worker runs the job.
    let (registry, _, producer) = deploy(connect(&cluster).await, &[("hello_q", "quiet")]).await;
    let worker = start_worker_with(
        Arc::new(connect(&cluster).await),
        registry,
        HostServices::default(),
        cfg(&["quiet"], 1),
    );
    let id = enqueue(&producer, &["hello_q"], 1, 0).await[0];
    hear_end(&mut events, id).await;
    worker.stop().await;
}

/// A task re-bound on a cluster keeps the binding it replaced: the
/// script that binds writes the bindings and the name's history, which
/// must share a slot for it to run there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_re_bound_on_a_cluster() {
    let cluster = start_cluster(3, 0).await;
    let registry = RedisRegistry::new(connect(&cluster).await.connection());
    let first = registry.put_module(&guest_bytes("hello")).await.unwrap();
    let second = registry.put_module(b"second module").await.unwrap();
    registry
        .bind(TaskBinding::new("deployed", first))
        .await
        .unwrap();
    registry
        .bind(TaskBinding::new("deployed", second))
        .await
        .expect("a re-bind on a cluster");
    assert_eq!(
        registry.task("deployed").await.unwrap().unwrap().module,
        second
    );
    let history = registry.history("deployed").await.unwrap();
    assert_eq!(
        history.iter().map(|b| b.module).collect::<Vec<_>>(),
        vec![first]
    );
}
