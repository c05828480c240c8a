//! `runner:task/kv`: a small key-value store, namespaced per task name.

use std::time::Duration;

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::kv;
use crate::sandbox::run::RunState;
use anyhow::Context as _;
use runner_host_fns::kv::RedisKv;

use crate::queue::redis::{RedisEndpoint, RedisTls, redact_url};
use serde::Deserialize;

use super::Service;
use crate::registry::TaskGrants;
use runner_host_fns::kv::{KvQuota, KvService};
use std::sync::Arc;

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

/// A task's kv namespace on the process's [`KvService`], with its quota.
struct TaskKv {
    service: Arc<KvService>,
    task: Arc<str>,
    quota: KvQuota,
}

impl KvNamespace for TaskKv {
    fn set_nx(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<bool, HostError>> {
        Box::pin(async move {
            Ok(self
                .service
                .set_nx(&self.task, &self.quota, &key, &value, ttl.map(millis))
                .await?)
        })
    }

    fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), HostError>> {
        Box::pin(async move {
            Ok(self
                .service
                .set(&self.task, &self.quota, &key, &value, ttl.map(millis))
                .await?)
        })
    }

    fn get(&self, key: String) -> BoxFuture<'_, Result<Option<Vec<u8>>, HostError>> {
        Box::pin(async move { Ok(self.service.get(&self.task, &key).await?) })
    }

    fn delete(&self, key: String) -> BoxFuture<'_, Result<bool, HostError>> {
        Box::pin(async move { Ok(self.service.delete(&self.task, &key).await?) })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `[host.kv]`: in memory (one process) unless `redis_url` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvConfig {
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    pub prefix: Option<String>,
    /// The broker's TLS files, when the store is in the broker's Redis.
    #[serde(skip)]
    pub tls: RedisTls,
}

const DEFAULT_KV_PREFIX: &str = "runner:kv";

/// The process's kv store `[host.kv]` describes (none without it).
pub(super) async fn service(config: Option<&KvConfig>) -> anyhow::Result<Option<Arc<KvService>>> {
    let Some(config) = config else {
        return Ok(None);
    };
    let service = match &config.redis_url {
        Some(url) => {
            let prefix = config.prefix.as_deref().unwrap_or(DEFAULT_KV_PREFIX);
            let cannot = || format!("[host.kv]: cannot connect to {}", redact_url(url));
            let endpoint = RedisEndpoint::open(url, &config.tls).with_context(cannot)?;
            let store = RedisKv::on(endpoint.connect().await.with_context(cannot)?, prefix);
            KvService::new(Arc::new(store))
        }
        None => KvService::in_memory(),
    };
    Ok(Some(Arc::new(service)))
}

/// `task`'s namespace of the kv store, under its grant's quota.
pub(super) fn grant(
    service: &Option<Arc<KvService>>,
    task: &str,
    grants: &TaskGrants,
) -> Service<dyn KvNamespace> {
    Service::bind(service, grants.kv.as_ref(), |service, grant| {
        Arc::new(TaskKv {
            service,
            task: Arc::from(task),
            quota: grant.quota(),
        }) as Arc<dyn KvNamespace>
    })
}
