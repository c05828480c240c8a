//! The cached Redis registry (`registry/cache.rs`): a producer reads a task's
//! binding once, not on every enqueue, and hears every re-bind.

use std::time::{Duration, Instant};

use runner::queue::redis::RedisEndpoint;
use runner::registry::{ModuleHash, RedisRegistry, Registry, TaskBinding};

use crate::redis_support::RedisServer;

/// `HGET` calls the server has run (INFO commandstats).
fn hgets(server: &RedisServer) -> u64 {
    crate::redis_support::command_calls(server, "hget")
}

async fn registry(server: &RedisServer, cached: bool) -> RedisRegistry {
    let endpoint = RedisEndpoint::open(&server.url(), &Default::default()).unwrap();
    let conn = endpoint.connect().await.unwrap();
    if cached {
        // An hour: only a change heard can make it read again.
        RedisRegistry::cached_for(conn, &endpoint, Duration::from_secs(3600))
    } else {
        RedisRegistry::new(conn)
    }
}

fn module(byte: u8) -> ModuleHash {
    ModuleHash::of(&[byte])
}

async fn bind(r: &RedisRegistry, m: ModuleHash) {
    r.bind(TaskBinding::new("t", m)).await.unwrap();
}

/// The modules `t` was bound to before, newest first.
async fn history_of(r: &dyn Registry) -> Vec<ModuleHash> {
    let history = r.history("t").await.unwrap();
    history.into_iter().map(|b| b.module).collect()
}

async fn module_of(r: &RedisRegistry) -> ModuleHash {
    r.task("t").await.unwrap().expect("bound").module
}

/// Two processes' registries: the producer's keeps what it read (a second
/// read sends nothing), forgets it when the other re-binds the name (its
/// entries would last an hour otherwise), and sees its own re-bind at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_registry_reads_once_and_hears_every_rebind() {
    let server = RedisServer::start();
    let producer = registry(&server, true).await;
    let admin = registry(&server, false).await;
    bind(&admin, module(1)).await;

    // Once its change feed is up, a read is served from the cache.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(module_of(&producer).await, module(1));
        let before = hgets(&server);
        assert_eq!(module_of(&producer).await, module(1));
        if hgets(&server) == before {
            break;
        }
        assert!(Instant::now() < deadline, "every read still goes to Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = hgets(&server);
    for _ in 0..10 {
        assert_eq!(module_of(&producer).await, module(1));
    }
    assert_eq!(hgets(&server), before, "cached reads send no HGET");

    // Another process re-binds: heard, not waited out.
    bind(&admin, module(2)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while module_of(&producer).await != module(2) {
        assert!(Instant::now() < deadline, "the re-bind was not heard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Its own re-bind: at once.
    bind(&producer, module(3)).await;
    assert_eq!(module_of(&producer).await, module(3));
}

/// Redis restarts (with its append-only file): the first read on the old
/// connection finds it dead, and is sent again on the new one instead of
/// failing (it used to fail once: a 503 from the API after every restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_after_a_redis_restart_succeeds() {
    let mut server = RedisServer::start_with_aof();
    let r = registry(&server, false).await;
    bind(&r, module(1)).await;
    assert_eq!(r.tasks().await.unwrap().len(), 1);
    tokio::task::block_in_place(|| server.restart());
    let tasks = r.tasks().await.expect("the first read after the restart");
    assert_eq!(tasks.len(), 1);
    assert_eq!(module_of(&r).await, module(1));
}

/// Binds racing on one name each push the binding they replaced: the
/// history holds every earlier binding once. (The binding replaced was
/// read before the write, apart from it: racing binds all read the same
/// one, pushed it again and again, and lost the others.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_binds_each_keep_the_one_they_replace() {
    let server = RedisServer::start();
    let r = registry(&server, false).await;
    bind(&r, module(0)).await;
    let binds = (1..=20u8).map(|i| {
        let r = r.clone();
        async move { bind(&r, module(i)).await }
    });
    futures::future::join_all(binds).await;
    let now = module_of(&r).await;
    let mut seen = history_of(&r).await;
    seen.push(now);
    seen.sort_by_key(|m| m.to_hex());
    let mut want: Vec<ModuleHash> = (0..=20u8).map(module).collect();
    want.sort_by_key(|m| m.to_hex());
    assert_eq!(seen, want, "each binding once: in the history or bound now");
}

/// The history an earlier build kept (`runner:task-history:<name>`) is
/// still read, after the bindings replaced since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_builds_history_is_still_read() {
    let server = RedisServer::start();
    let r = registry(&server, false).await;
    let old = serde_json::to_string(&TaskBinding::new("t", module(9))).unwrap();
    let mut conn = redis::Client::open(server.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg("runner:task-history:t")
        .arg(old)
        .query_async(&mut conn)
        .await
        .unwrap();
    bind(&r, module(1)).await;
    bind(&r, module(2)).await;
    let history = history_of(&r).await;
    assert_eq!(history, vec![module(1), module(9)]);
}

/// A local registry that cannot save a bind keeps what it had, in memory
/// as on disk: the bind fails and nothing changed (before, memory already
/// held the new binding, which then ran until a restart brought the old
/// one back). The failed save leaves no temporary file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_bind_that_cannot_be_saved_changes_nothing() {
    use runner::registry::LocalRegistry;
    let dir = tempfile::tempdir().unwrap();
    let r = LocalRegistry::open(dir.path()).unwrap();
    r.bind(TaskBinding::new("t", module(1))).await.unwrap();
    // The save renames a temporary file onto `tasks.json`: a directory
    // there fails it.
    let tasks = dir.path().join("tasks.json");
    std::fs::remove_file(&tasks).unwrap();
    std::fs::create_dir(&tasks).unwrap();
    assert!(r.bind(TaskBinding::new("t", module(2))).await.is_err());
    assert!(r.bind(TaskBinding::new("u", module(3))).await.is_err());
    assert_eq!(r.task("t").await.unwrap().unwrap().module, module(1));
    assert!(r.task("u").await.unwrap().is_none());
    assert!(r.history("t").await.unwrap().is_empty());
    let stray: Vec<_> = crate::support::files_in(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    // Once it can save again, binds work, and a restart sees what memory had.
    std::fs::remove_dir(&tasks).unwrap();
    r.bind(TaskBinding::new("t", module(4))).await.unwrap();
    drop(r);
    let again = LocalRegistry::open(dir.path()).unwrap();
    assert_eq!(again.task("t").await.unwrap().unwrap().module, module(4));
    let history = history_of(&again).await;
    assert_eq!(history, vec![module(1)]);
}

/// One new module stored by several callers at once on the local registry
/// (two binds of a new module in `runner dev`): every store succeeds, and
/// a restart finds the module whole. Before, the stores shared one
/// temporary file: a rename found it gone (an error for a good upload),
/// or moved a file another store was rewriting.
#[test]
fn a_module_stored_by_several_at_once_is_stored_once_whole() {
    use runner::registry::LocalRegistry;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20u8 {
        let r = std::sync::Arc::new(LocalRegistry::open(dir.path()).unwrap());
        // Large enough that the writes overlap.
        let bytes: Vec<u8> = (0..4 << 20).map(|i| (i as u8) ^ round).collect();
        let start = std::sync::Arc::new(std::sync::Barrier::new(8));
        let stores: Vec<_> = (0..8)
            .map(|_| {
                let (r, start, bytes) = (r.clone(), start.clone(), bytes.clone());
                std::thread::spawn(move || {
                    start.wait();
                    futures::executor::block_on(r.store_module(&bytes, Vec::new()))
                })
            })
            .collect();
        for s in stores {
            s.join().unwrap().unwrap();
        }
        drop(r);
        let again = LocalRegistry::open(dir.path()).unwrap();
        let stored = futures::executor::block_on(again.module(&ModuleHash::of(&bytes)))
            .unwrap()
            .expect("stored");
        assert_eq!(stored.len(), bytes.len(), "round {round}");
        assert!(stored == bytes, "round {round}");
    }
}

/// A local registry directory is used by one registry at a time: a second
/// open (here in the same process; another `runner dev` on the same data
/// directory alike) is refused, naming the directory, while the first is
/// open, and works once it is dropped. Before, both opened it, each kept
/// its own bindings in memory and rewrote `tasks.json` whole: each save
/// dropped the other's binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_registry_directory_is_used_by_one_registry_at_a_time() {
    use runner::registry::{LocalRegistry, RegistryError};
    let dir = tempfile::tempdir().unwrap();
    let first = LocalRegistry::open(dir.path()).unwrap();
    first.bind(TaskBinding::new("a", module(1))).await.unwrap();
    let refused = match LocalRegistry::open(dir.path()) {
        Ok(_) => panic!("a second registry opened {}", dir.path().display()),
        Err(e) => e,
    };
    assert!(matches!(refused, RegistryError::InUse(_)), "{refused:?}");
    let said = refused.to_string();
    assert!(
        said.contains(&dir.path().display().to_string()),
        "the directory is not named: {said}"
    );
    assert!(said.contains("another `runner dev`"), "{said}");
    // The refusal changed nothing: the first still binds and saves.
    first.bind(TaskBinding::new("b", module(2))).await.unwrap();
    drop(first);
    let again = LocalRegistry::open(dir.path()).unwrap();
    let names: Vec<String> = again
        .tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
}
