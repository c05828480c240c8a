//! Helpers shared by the test modules.

/// rustls's process-wide crypto provider (ring), as the binary installs it.
pub use runner_host_fns::install_crypto_provider;

/// A `redis-server` of our own (shared with the runtime's tests).
pub use runner_test_support::{RedisServer, free_port};
