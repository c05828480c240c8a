//! The kv service on both stores: in memory, and on a real redis-server.

use std::sync::Arc;
use std::time::Duration;

use runner_host_fns::HostError;
use runner_host_fns::kv::{KvQuota, KvService, MemoryKv, RedisKv};

use crate::support::RedisServer;

async fn semantics(kv: &KvService) {
    let q = KvQuota::default();
    // set-nx: the "already reminded today" guard.
    assert!(
        kv.set_nx(
            "reminder",
            &q,
            "remind:42:2026-11-22",
            b"1",
            Some(86_400_000)
        )
        .await
        .expect("first")
    );
    assert!(
        !kv.set_nx(
            "reminder",
            &q,
            "remind:42:2026-11-22",
            b"2",
            Some(86_400_000)
        )
        .await
        .expect("second")
    );
    assert_eq!(
        kv.get("reminder", "remind:42:2026-11-22")
            .await
            .expect("get"),
        Some(b"1".to_vec())
    );

    // Namespaces are apart.
    assert_eq!(
        kv.get("report", "remind:42:2026-11-22")
            .await
            .expect("other ns"),
        None
    );
    assert!(
        kv.set_nx("report", &q, "remind:42:2026-11-22", b"r", None)
            .await
            .expect("other ns set")
    );
    assert_eq!(
        kv.get("reminder", "remind:42:2026-11-22")
            .await
            .expect("get"),
        Some(b"1".to_vec())
    );

    // set replaces; binary values survive.
    let bin: Vec<u8> = (0..=255).collect();
    kv.set("reminder", &q, "blob", &bin, None)
        .await
        .expect("set");
    kv.set("reminder", &q, "blob", &bin[..10], None)
        .await
        .expect("replace");
    assert_eq!(
        kv.get("reminder", "blob").await.expect("get"),
        Some(bin[..10].to_vec())
    );

    // delete
    assert!(kv.delete("reminder", "blob").await.expect("delete"));
    assert!(!kv.delete("reminder", "blob").await.expect("delete again"));
    assert_eq!(kv.get("reminder", "blob").await.expect("get"), None);

    // TTL is honoured, and an expired key can be claimed again.
    assert!(
        kv.set_nx("reminder", &q, "short", b"x", Some(150))
            .await
            .expect("short")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        kv.get("reminder", "short").await.expect("get expired"),
        None
    );
    assert!(
        kv.set_nx("reminder", &q, "short", b"y", None)
            .await
            .expect("claim again")
    );

    // Bad arguments.
    assert!(matches!(
        kv.set("reminder", &q, "", b"x", None).await,
        Err(HostError::Invalid(_))
    ));
    assert!(matches!(
        kv.set("reminder", &q, "k", b"x", Some(0)).await,
        Err(HostError::Invalid(_))
    ));
    assert!(matches!(
        kv.get("reminder", &"k".repeat(513)).await,
        Err(HostError::Invalid(_))
    ));
    assert!(matches!(kv.get("", "k").await, Err(HostError::Denied(_))));
}

async fn quotas(kv: &KvService) {
    let q = KvQuota {
        max_keys: 3,
        max_bytes: 100,
    };
    for k in ["a", "b", "c"] {
        kv.set("quota", &q, k, b"1234", None)
            .await
            .expect("within quota");
    }
    let err = kv
        .set("quota", &q, "d", b"1", None)
        .await
        .expect_err("4th key");
    assert!(
        matches!(err, HostError::Permanent(ref m) if m.contains("3 keys")),
        "{err}"
    );
    // Replacing an existing key does not add a key.
    kv.set("quota", &q, "a", b"12345678", None)
        .await
        .expect("replace");
    // Bytes: key + value.
    let err = kv
        .set("quota", &q, "b", &[0u8; 99], None)
        .await
        .expect_err("too many bytes");
    assert!(
        matches!(err, HostError::Permanent(ref m) if m.contains("100 bytes")),
        "{err}"
    );
    // Deleting frees room.
    assert!(kv.delete("quota", "c").await.expect("delete"));
    kv.set("quota", &q, "d", b"1", None)
        .await
        .expect("room again");
    // Expired keys stop counting.
    kv.delete("quota", "d").await.expect("delete");
    kv.set("quota", &q, "e", &[1u8; 60], Some(100))
        .await
        .expect("short-lived");
    assert!(kv.set("quota", &q, "f", &[1u8; 60], None).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    kv.set("quota", &q, "f", &[1u8; 60], None)
        .await
        .expect("expired key freed its bytes");
    // Another task has its own quota.
    for k in ["a", "b", "c"] {
        kv.set("quota-2", &q, k, b"x", None)
            .await
            .expect("other namespace");
    }
}

#[tokio::test]
async fn memory_store_semantics() {
    semantics(&KvService::in_memory()).await;
}

#[tokio::test]
async fn memory_store_quotas() {
    quotas(&KvService::new(Arc::new(MemoryKv::default()))).await;
}

#[tokio::test]
async fn redis_store_semantics_and_quotas() {
    let server = RedisServer::start();
    // Strict keys: every script must declare every key it touches.
    let store = RedisKv::connect(&server.url(), "test:kv")
        .await
        .expect("connect")
        .with_strict_keys();
    let kv = KvService::new(Arc::new(store));
    semantics(&kv).await;
    quotas(&kv).await;

    // Keys live under the prefix with the task name as hash tag, with a real TTL.
    let client = redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("test:kv:{reminder}:k:remind:42:2026-11-22")
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(ttl > 86_000_000 && ttl <= 86_400_000, "ttl {ttl}");
}

/// The same store on a Redis Cluster of three masters: a namespace's keys
/// share its hash tag, so its scripts run on one master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_semantics_and_quotas() {
    let cluster = tokio::task::spawn_blocking(|| runner_test_support::RedisCluster::start(3, 0))
        .await
        .unwrap();
    let seeds: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}/", n.port))
        .collect();
    let conn = redis::cluster::ClusterClient::new(seeds)
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("cluster connection");
    let store = RedisKv::on(
        runner_host_fns::redis_conn::Counted::cluster(conn),
        "test:kv",
    )
    .with_strict_keys();
    let kv = KvService::new(Arc::new(store));
    semantics(&kv).await;
    quotas(&kv).await;
}

#[tokio::test]
async fn redis_down_is_transient() {
    let server = RedisServer::start();
    let store = RedisKv::connect(&server.url(), "test:kv")
        .await
        .expect("connect");
    let kv = KvService::new(Arc::new(store));
    drop(server);
    let q = KvQuota::default();
    let err = kv
        .set("t", &q, "k", b"v", None)
        .await
        .expect_err("redis is gone");
    assert!(matches!(err, HostError::Transient(_)), "{err}");
}

#[tokio::test]
async fn values_are_capped_whatever_the_quota() {
    let kv = KvService::in_memory();
    let roomy = KvQuota {
        max_keys: 10,
        max_bytes: 64 * 1024 * 1024,
    };
    let max = 1024 * 1024;
    kv.set("big", &roomy, "fits", &vec![1u8; max], None)
        .await
        .expect("1 MiB fits");
    let err = kv
        .set("big", &roomy, "k", &vec![1u8; max + 1], None)
        .await
        .expect_err("over 1 MiB");
    assert!(
        matches!(err, HostError::Invalid(ref m) if m.contains("1048576")),
        "{err}"
    );
    let err = kv
        .set_nx("big", &roomy, "k", &vec![1u8; max + 1], None)
        .await
        .expect_err("over 1 MiB");
    assert!(matches!(err, HostError::Invalid(_)), "{err}");
    assert_eq!(kv.get("big", "k").await.expect("get"), None);
}
