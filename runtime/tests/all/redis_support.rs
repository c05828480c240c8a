//! A real `redis-server` per test (the helper every crate's tests share).

pub use runner_test_support::{RedisCluster, RedisServer, free_port};
