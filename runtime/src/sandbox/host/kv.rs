//! `runner:task/kv`: a small key-value store, namespaced per task name.

use std::time::Duration;

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::kv;
use crate::sandbox::run::RunState;

/// The key-value service one run talks to. An implementation is already
/// scoped to the task's namespace and quota: keys arrive as the guest wrote
/// them.
pub trait KvNamespace: Send + Sync {
    /// Stores `value` only if `key` is absent; true if it was stored.
    fn set_nx(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<bool, HostError>>;

    fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), HostError>>;

    fn get(&self, key: String) -> BoxFuture<'_, Result<Option<Vec<u8>>, HostError>>;

    /// Deletes `key`; true if it existed.
    fn delete(&self, key: String) -> BoxFuture<'_, Result<bool, HostError>>;
}

const CAPABILITY: &str = "kv";

impl kv::Host for RunState {
    async fn set_nx(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> GuestResult<bool> {
        self.host_call(CAPABILITY, "set_nx", |host| &host.kv)
            .run(|kv| async move {
                kv.set_nx(key, value, ttl_ms.map(Duration::from_millis))
                    .await
            })
            .await
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> GuestResult<()> {
        self.host_call(CAPABILITY, "set", |host| &host.kv)
            .run(|kv| async move { kv.set(key, value, ttl_ms.map(Duration::from_millis)).await })
            .await
    }

    async fn get(&mut self, key: String) -> GuestResult<Option<Vec<u8>>> {
        self.host_call(CAPABILITY, "get", |host| &host.kv)
            .run(|kv| async move { kv.get(key).await })
            .await
    }

    async fn delete(&mut self, key: String) -> GuestResult<bool> {
        self.host_call(CAPABILITY, "delete", |host| &host.kv)
            .run(|kv| async move { kv.delete(key).await })
            .await
    }
}
