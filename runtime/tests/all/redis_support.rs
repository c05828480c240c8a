//! A real `redis-server` per test (the helper every crate's tests share).

pub use runner_test_support::{RedisCluster, RedisServer, free_port};

/// How many times command `name` ran, from the text of INFO commandstats.
pub fn calls_of(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// How many times `server` has run command `name` (INFO commandstats).
pub fn command_calls(server: &RedisServer, name: &str) -> u64 {
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    calls_of(&stats, name)
}
