//! Putting a deployment together from `runner.toml`: the broker and the
//! registry it implies (Redis, or embedded in this process), the task
//! bindings of `[tasks.*]`, the producer with the queues' rate limits, and
//! the API. `runner dev`, `runner serve`, `runner worker` and `runner
//! scheduler` all start here, so they agree on what a config file means.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, ModuleSource, parse_module_source};
use crate::queue::{Broker, EmbeddedBroker, Producer, RedisBroker};
use crate::registry::deploy;
use crate::registry::{LocalRegistry, RedisRegistry, Registry};
use crate::sandbox::Sandbox;

/// The shared parts of one process.
#[derive(Clone)]
pub struct Core {
    pub broker: Arc<dyn Broker>,
    pub registry: Arc<dyn Registry>,
    pub producer: Producer,
    pub sandbox: Sandbox,
    /// The Redis URL, when the broker is Redis.
    pub redis_url: Option<String>,
    /// The beats (config and dynamic); its loop runs where the caller
    /// starts it (`runner scheduler`, `runner dev`, `serve --scheduler`).
    pub scheduler: crate::scheduler::Scheduler,
}

impl Core {
    /// Connects to Redis when `config.broker.redis_url` is set; else an
    /// embedded broker with a registry kept under `data_dir` (memory only
    /// without it).
    pub async fn open(config: &Config, sandbox: Sandbox) -> anyhow::Result<Self> {
        let (broker, registry): (Arc<dyn Broker>, Arc<dyn Registry>) =
            match &config.broker.redis_url {
                Some(url) => {
                    let broker = RedisBroker::connect(url)
                        .await
                        .with_context(|| format!("connecting to Redis at {url}"))?;
                    let registry = RedisRegistry::new(broker.connection());
                    (Arc::new(broker), Arc::new(registry))
                }
                None => {
                    let registry: Arc<dyn Registry> = match &config.broker.data_dir {
                        Some(dir) => {
                            let dir = config.path(dir);
                            Arc::new(LocalRegistry::open(&dir).with_context(|| {
                                format!("opening the registry in {}", dir.display())
                            })?)
                        }
                        None => Arc::new(LocalRegistry::in_memory()),
                    };
                    (Arc::new(EmbeddedBroker::new()), registry)
                }
            };
        let mut producer = Producer::new(broker.clone(), registry.clone());
        for (queue, spec) in config.queue_limits() {
            producer = producer
                .with_queue_limit(queue, spec)
                .with_context(|| format!("queues.{queue}.rate_limit"))?;
        }
        let beats = config_beats(config)?;
        let scheduler = match &config.broker.redis_url {
            Some(url) => crate::scheduler::Scheduler::connect_redis(
                url,
                producer.clone(),
                registry.clone(),
                beats,
            )
            .await
            .context("[[beats]]")?,
            None => {
                crate::scheduler::Scheduler::embedded(producer.clone(), registry.clone(), beats)
                    .context("[[beats]]")?
            }
        };
        Ok(Core {
            broker,
            registry,
            producer,
            sandbox,
            redis_url: config.broker.redis_url.clone(),
            scheduler,
        })
    }

    /// Uploads and binds every `[tasks.NAME]` that names a module. A
    /// binding that is already current is left as it is (no history entry
    /// per restart).
    pub async fn apply_tasks(&self, config: &Config) -> anyhow::Result<Vec<String>> {
        let mut bound = Vec::new();
        for (name, spec) in &config.tasks {
            let Some(source) = &spec.module else { continue };
            let hash = match parse_module_source(source)? {
                ModuleSource::Hash(h) => h,
                ModuleSource::Builtin(b) => {
                    let bytes = crate::builtin::module(&b).unwrap_or_default().to_vec();
                    deploy::upload(&self.sandbox, &self.registry, bytes)
                        .await
                        .with_context(|| format!("tasks.{name}: built-in {b}"))?
                        .0
                        .hash
                }
                ModuleSource::Path(p) => {
                    let path = config.path(&p);
                    let bytes = std::fs::read(&path).with_context(|| {
                        format!("tasks.{name}.module: cannot read {}", path.display())
                    })?;
                    deploy::upload(&self.sandbox, &self.registry, bytes)
                        .await
                        .with_context(|| format!("tasks.{name}.module: {}", path.display()))?
                        .0
                        .hash
                }
            };
            let binding = spec
                .defaults(name, &hash)
                .with_context(|| format!("tasks.{name}"))?;
            if let Some(current) = self.registry.task(name).await?
                && same_binding(&current, &binding)
            {
                bound.push(name.clone());
                continue;
            }
            deploy::bind(&self.sandbox, &self.registry, binding)
                .await
                .with_context(|| format!("tasks.{name}"))?;
            bound.push(name.clone());
        }
        Ok(bound)
    }
}

/// The `[[beats]]` of the config, each error naming its index.
pub fn config_beats(config: &Config) -> anyhow::Result<Vec<crate::scheduler::beat::Beat>> {
    config
        .beats
        .iter()
        .enumerate()
        .map(|(i, v)| serde_json::from_value(v.clone()).with_context(|| format!("beats[{i}]")))
        .collect()
}

fn same_binding(a: &crate::registry::TaskBinding, b: &crate::registry::TaskBinding) -> bool {
    let mut a = a.clone();
    a.bound_at = b.bound_at;
    &a == b
}

/// Reads `path` (or the defaults) with the environment applied.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load_or_default(path)
}

/// The process's Prometheus recorder, installed on first use (one per
/// process: tests start several servers in one process).
pub fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

/// The API's context for `core` with `config`'s server settings.
pub fn api_context(
    core: &Core,
    config: &Config,
    auth: crate::api::Auth,
) -> anyhow::Result<crate::api::ApiContext> {
    Ok(crate::api::ApiContext {
        registry: core.registry.clone(),
        broker: core.broker.clone(),
        producer: core.producer.clone(),
        sandbox: core.sandbox.clone(),
        auth,
        max_body: config.server.max_body_bytes()?,
        metrics: metrics_handle(),
        scheduler: Some(core.scheduler.clone()),
        closing: tokio_util::sync::CancellationToken::new(),
    })
}

/// Tokens from `[auth]`, or open when `[server] open = true`; refuses to
/// serve with neither (nothing that changes state is reachable without a
/// token unless the operator opts out).
pub fn auth_from(config: &Config) -> anyhow::Result<crate::api::Auth> {
    if config.server.open {
        return Ok(crate::api::Auth::open());
    }
    if config.auth.admin.is_empty() && config.auth.submit.is_empty() {
        anyhow::bail!(
            "no API tokens: set RUNNER_ADMIN_TOKENS (and RUNNER_SUBMIT_TOKENS), or [auth] in runner.toml, \
             or `[server] open = true` to serve without tokens"
        );
    }
    Ok(crate::api::Auth::new(
        &config.auth.admin,
        &config.auth.submit,
    ))
}

/// Every queue a config mentions: `[worker] queues`, or else `default`,
/// the `[queues.*]` and the tasks' queues.
pub fn worker_queues(config: &Config) -> Vec<String> {
    if let Some(q) = &config.worker.queues {
        return q.clone();
    }
    let mut qs = vec![crate::queue::client::DEFAULT_QUEUE.to_string()];
    qs.extend(config.queues.keys().cloned());
    qs.extend(config.tasks.values().filter_map(|t| t.queue.clone()));
    qs.sort();
    qs.dedup();
    qs
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A worker on `core` consuming the config's queues (see [`worker_queues`])
/// with the services of `[host]`.
pub async fn worker(
    core: &Core,
    config: &Config,
    concurrency: Option<usize>,
) -> anyhow::Result<crate::worker::Worker> {
    let services = crate::sandbox::host::HostServices::from_config(&host_config(config))
        .await
        .context("[host]")?;
    worker_with(core, config, services, concurrency)
}

/// `[host]` as the services see it: a `[host.kv]` without its own
/// `redis_url` lives in the broker's Redis when there is one (so that
/// every worker shares it), in memory otherwise.
pub fn host_config(config: &Config) -> crate::sandbox::host::services::HostConfig {
    let mut host = config.host.clone();
    if let (Some(kv), Some(url)) = (host.kv.as_mut(), &config.broker.redis_url)
        && kv.redis_url.is_none()
    {
        kv.redis_url = Some(url.clone());
    }
    host
}

/// Like [`worker`], with services built by the caller.
pub fn worker_with(
    core: &Core,
    config: &Config,
    services: crate::sandbox::host::HostServices,
    concurrency: Option<usize>,
) -> anyhow::Result<crate::worker::Worker> {
    let mut cfg = crate::worker::WorkerConfig {
        queues: worker_queues(config),
        ..Default::default()
    };
    if let Some(c) = concurrency.or(config.worker.concurrency) {
        anyhow::ensure!(c > 0, "worker concurrency must be at least 1");
        cfg.concurrency = c;
    }
    cfg.prefetch = cfg.concurrency;
    Ok(crate::worker::Worker::new(
        core.broker.clone(),
        core.registry.clone(),
        core.sandbox.clone(),
        services,
        cfg,
    )
    .with_producer(core.producer.clone()))
}
