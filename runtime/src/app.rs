//! Putting a process together: the one path from a [`Config`] to the parts
//! of a running process. `runner dev`, `serve`, `worker`, `scheduler` and
//! `run` all load their configuration with [`Config::load_or_default`]
//! (file, then environment), apply their flags on top, and build what they
//! need with the constructors here, so that they agree on what a
//! `runner.toml` means:
//!
//! - [`connect`]: the broker and registry (Redis, or embedded in this
//!   process);
//! - [`producer`]: enqueueing with the queues' rate limits;
//! - [`scheduler`]: the beats of the file and the API;
//! - [`host_services`]: the services of `[host]` (kv in the broker's Redis
//!   unless it names its own);
//! - [`sandbox`]: the wasmtime engine and its module cache;
//! - [`worker`]: a worker with `[worker]` as its defaults;
//! - [`api_context`], [`auth_from`], [`metrics_handle`]: the HTTP side.
//!
//! [`Process`] runs the long-lived parts (API, worker, scheduler) until
//! SIGINT/SIGTERM and stops them together.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, ModuleSource, parse_module_source};
use crate::deploy;
use crate::producer::Producer;
use crate::queue::redis::{RedisTls, redact_url};
use crate::queue::{Broker, DEFAULT_QUEUE, EmbeddedBroker, RedisBroker};
use crate::registry::{LocalRegistry, RedisRegistry, Registry};
use crate::sandbox::host::HostServices;
use crate::sandbox::host::services::HostConfig;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::scheduler::Scheduler;
use crate::worker::{Worker, WorkerConfig};

/// The shared parts of an API process (`dev`, `serve`).
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
    pub scheduler: Scheduler,
}

impl Core {
    /// The broker and registry of `config` (see [`connect`]), its producer
    /// and its scheduler, around `sandbox`.
    pub async fn open(config: &Config, sandbox: Sandbox) -> anyhow::Result<Self> {
        let (broker, registry) = connect(config).await?;
        let producer = producer(config, &broker, &registry)?;
        let scheduler = scheduler(config, &producer, &registry).await?;
        Ok(Core {
            broker,
            registry,
            producer,
            sandbox,
            redis_url: config.broker.redis_url.clone(),
            scheduler,
        })
    }

    /// A worker on this core's broker, registry, producer and sandbox (see
    /// [`worker`]).
    pub fn worker(&self, config: &Config, services: HostServices) -> anyhow::Result<Worker> {
        worker(
            config,
            &self.broker,
            &self.registry,
            &self.producer,
            &self.sandbox,
            services,
        )
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
                    let bytes = crate::builtin::module(&b)
                        .with_context(|| format!("tasks.{name}: no built-in {b}"))?
                        .to_vec();
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

fn same_binding(a: &crate::registry::TaskBinding, b: &crate::registry::TaskBinding) -> bool {
    let mut a = a.clone();
    a.bound_at = b.bound_at;
    &a == b
}

/// The broker and the registry `config` names: Redis when
/// `[broker] redis_url` is set; else an embedded broker with a registry
/// kept under `[broker] data_dir` (memory only without it).
pub async fn connect(config: &Config) -> anyhow::Result<(Arc<dyn Broker>, Arc<dyn Registry>)> {
    match &config.broker.redis_url {
        Some(url) => {
            let broker = RedisBroker::connect_with(url, &redis_tls(config))
                .await
                .with_context(|| format!("connecting to Redis at {}", redact_url(url)))?;
            let registry = RedisRegistry::cached(broker.connection(), broker.endpoint());
            Ok((Arc::new(broker), Arc::new(registry)))
        }
        None => {
            let registry: Arc<dyn Registry> =
                match &config.broker.data_dir {
                    Some(dir) => {
                        let dir = config.path(dir);
                        Arc::new(LocalRegistry::open(&dir).with_context(|| {
                            format!("opening the registry in {}", dir.display())
                        })?)
                    }
                    None => Arc::new(LocalRegistry::in_memory()),
                };
            Ok((Arc::new(EmbeddedBroker::new()), registry))
        }
    }
}

/// Refuses a config without Redis for a process that must share its
/// broker with others (`runner worker`, `runner scheduler`): the embedded
/// broker lives inside one process.
pub fn require_redis(config: &Config, process: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.broker.redis_url.is_some(),
        "no Redis URL for `runner {process}`: pass --redis redis://host:port, set \
         RUNNER_REDIS_URL or [broker] redis_url in runner.toml (the embedded broker only \
         exists inside one process, e.g. `runner dev`)"
    );
    Ok(())
}

/// How [`wait_for_redis`] ended.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisWait {
    /// Redis answers (or the config names none): go on starting.
    Answered,
    /// The process was told to stop (SIGTERM) before Redis answered: it
    /// ends, successfully, as it would have once started.
    Stopped,
}

/// The TLS handshake refused the server or its data (a certificate of
/// another CA or for another name): waiting cannot fix it. The redis crate
/// reports it as an I/O error, which reads as "not reachable yet", and
/// tokio-rustls gives it the kind `InvalidData`.
fn tls_refused(e: &redis::RedisError) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>())
        .and_then(|inner| (**inner).downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
}

/// Waits until the broker's Redis answers a PING, so that a process started
/// before Redis (a boot, a restart of Redis) comes up once it can, instead
/// of exiting: it logs once while it waits and once when connected. A
/// refusal that waiting cannot fix (a wrong password, an ACL without PING,
/// bad TLS files) fails at once. Ends early with [`RedisWait::Stopped`]
/// (and says so on stderr) if `stopping` resolves first (SIGTERM while
/// waiting): a stop, not a failure, for the caller to end on.
pub async fn wait_for_redis(
    config: &Config,
    stopping: impl Future<Output = ()>,
) -> anyhow::Result<RedisWait> {
    let Some(url) = &config.broker.redis_url else {
        return Ok(RedisWait::Answered);
    };
    let shown = redact_url(url);
    let endpoint = crate::queue::redis::RedisEndpoint::open(url, &redis_tls(config))
        .with_context(|| format!("connecting to Redis at {shown}"))?;
    let ping = || endpoint.ping();
    let wait = async {
        let mut logged = false;
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let e = match tokio::time::timeout(std::time::Duration::from_secs(5), ping()).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => e,
                Err(_) => redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer within 5 s",
                )),
            };
            let fatal = matches!(
                e.kind(),
                redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
            ) || e.code() == Some("NOPERM")
                || tls_refused(&e)
                || !crate::queue::redis_unavailable(&e);
            if fatal {
                return Err(
                    anyhow::Error::new(e).context(format!("connecting to Redis at {shown}"))
                );
            }
            if !logged {
                tracing::warn!("waiting for Redis at {shown}: {e}");
                logged = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
        if logged {
            tracing::info!("Redis at {shown} answers");
        }
        Ok(RedisWait::Answered)
    };
    tokio::select! {
        // `stopping` first: a stop already requested wins over a PING.
        biased;
        () = stopping => {
            eprintln!("stopped before Redis at {shown} answered");
            Ok(RedisWait::Stopped)
        }
        r = wait => r,
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` of a worker or scheduler
/// process on `listen` until the process stops.
pub async fn serve_ops(
    process: &mut Process,
    listen: &str,
    state: crate::api::OpsState,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics_listen: cannot listen on {listen}"))?;
    eprintln!("metrics: http://{}/metrics", listener.local_addr()?);
    let stopping = process.stopping();
    process.spawn("metrics server", async move {
        axum::serve(listener, crate::api::ops_router(state))
            .with_graceful_shutdown(stopping)
            .await?;
        Ok(())
    });
    Ok(())
}

/// A producer on `broker` and `registry` that stamps every job with the
/// global rate limit of its queue (`[queues.NAME] rate_limit`).
pub fn producer(
    config: &Config,
    broker: &Arc<dyn Broker>,
    registry: &Arc<dyn Registry>,
) -> anyhow::Result<Producer> {
    // The queues a submit token may name: every queue the file mentions.
    // (A worker may name one partition of a queue: the queue is meant.)
    let configured = worker_queues(config)
        .into_iter()
        .map(|q| crate::queue::partition::queue_of(&q).to_string())
        .chain(config.queues.keys().cloned())
        .chain(config.tasks.values().filter_map(|t| t.queue.clone()));
    let mut producer = Producer::new(broker.clone(), registry.clone())
        .with_queues(configured)
        .context("queues")?;
    for (queue, spec) in config.queue_limits() {
        producer = producer
            .with_queue_limit(queue, spec)
            .with_context(|| format!("queues.{queue}.rate_limit"))?;
    }
    Ok(producer.with_partitions(config.partitions()?))
}

/// The scheduler of `config`'s `[[beats]]` and the API's beats: in Redis
/// (shared by every replica) or in this process with the embedded broker.
pub async fn scheduler(
    config: &Config,
    producer: &Producer,
    registry: &Arc<dyn Registry>,
) -> anyhow::Result<Scheduler> {
    let beats = config.beats.clone();
    match &config.broker.redis_url {
        Some(url) => Scheduler::connect_redis_with(
            url,
            &redis_tls(config),
            producer.clone(),
            registry.clone(),
            beats,
        )
        .await
        .context("[[beats]]"),
        None => Scheduler::embedded(producer.clone(), registry.clone(), beats).context("[[beats]]"),
    }
}

/// `[host]` as the services see it: a `[host.kv]` without its own
/// `redis_url` lives in the broker's Redis when there is one (so that
/// every process shares it), in memory otherwise; in the broker's Redis
/// (no URL of its own, or the broker's) it uses the broker's TLS files.
pub fn host_config(config: &Config) -> HostConfig {
    let mut host = config.host.clone();
    if let (Some(kv), Some(url)) = (host.kv.as_mut(), &config.broker.redis_url)
        && kv.redis_url.as_ref().is_none_or(|own| own == url)
    {
        kv.redis_url = Some(url.clone());
        kv.tls = redis_tls(config);
    }
    host
}

/// `[broker] tls_*` (paths taken from the file's directory): the TLS files
/// of every connection to the broker's Redis (broker, registry, beats, kv).
pub fn redis_tls(config: &Config) -> RedisTls {
    let b = &config.broker;
    RedisTls {
        ca: b.tls_ca.as_deref().map(|p| config.path(p)),
        cert: b.tls_cert.as_deref().map(|p| config.path(p)),
        key: b.tls_key.as_deref().map(|p| config.path(p)),
    }
}

/// The services of `[host]` (see [`host_config`]), built once per process.
pub async fn host_services(config: &Config) -> anyhow::Result<HostServices> {
    HostServices::from_config(&host_config(config))
        .await
        .context("[host]")
}

/// The process's sandbox: compiled modules cached in `cache_dir` when
/// given, and `[worker] module_cache` of them kept in memory; pools sized
/// for `max_concurrent_runs` runs at once (the default when `None`).
pub fn sandbox(
    config: &Config,
    cache_dir: Option<PathBuf>,
    max_concurrent_runs: Option<usize>,
) -> anyhow::Result<Sandbox> {
    let defaults = SandboxConfig::default();
    let loaded_modules_max = match config.worker.module_cache {
        // 0 is refused by `Config::check`; at least one is kept anyway.
        Some(n) => n.max(1),
        None => defaults.loaded_modules_max,
    };
    let max_concurrent_runs = match max_concurrent_runs {
        Some(n) => u32::try_from(n.max(1)).unwrap_or(u32::MAX),
        None => defaults.max_concurrent_runs,
    };
    Sandbox::new(SandboxConfig {
        cache_dir,
        max_concurrent_runs,
        loaded_modules_max,
        ..defaults
    })
}

/// Every queue a config mentions: `[worker] queues`, or else `default`,
/// the `[queues.*]` and the tasks' queues.
pub fn worker_queues(config: &Config) -> Vec<String> {
    if let Some(q) = &config.worker.queues {
        return q.clone();
    }
    let mut qs = vec![DEFAULT_QUEUE.to_string()];
    qs.extend(config.queues.keys().cloned());
    qs.extend(config.tasks.values().filter_map(|t| t.queue.clone()));
    qs.sort();
    qs.dedup();
    qs
}

/// The worker settings `[worker]` gives (after the caller's flags were
/// applied to it), over [`WorkerConfig::default`].
pub fn worker_config(config: &Config) -> anyhow::Result<WorkerConfig> {
    let section = &config.worker;
    let mut cfg = WorkerConfig {
        // A partitioned queue is consumed in all its partitions.
        queues: config.partitions()?.expand(&worker_queues(config)),
        id: section.id.clone(),
        ..WorkerConfig::default()
    };
    if let Some(c) = section.concurrency {
        anyhow::ensure!(c > 0, "worker concurrency must be at least 1");
    }
    // Without a fixed count the slots adapt (`worker/slots.rs`).
    cfg.set_slots(section.concurrency, section.max_concurrency);
    cfg.prefetch = section.prefetch.map_or(
        crate::worker::Prefetch::Adaptive,
        crate::worker::Prefetch::Fixed,
    );
    if let Some(d) = section.lease()? {
        cfg.lease = d;
    }
    if let Some(d) = section.grace()? {
        cfg.grace = d;
    }
    if let Some(d) = section.heartbeat()? {
        cfg.heartbeat = d;
    }
    Ok(cfg)
}

/// A worker on `broker` and `registry` with `config`'s `[worker]` settings,
/// the given services, and child jobs through `producer`.
pub fn worker(
    config: &Config,
    broker: &Arc<dyn Broker>,
    registry: &Arc<dyn Registry>,
    producer: &Producer,
    sandbox: &Sandbox,
    services: HostServices,
) -> anyhow::Result<Worker> {
    let cfg = worker_config(config)?;
    Ok(Worker::new(
        broker.clone(),
        registry.clone(),
        sandbox.clone(),
        services,
        cfg,
    )
    .with_producer(producer.clone()))
}

/// The process's Prometheus recorder, installed on first use (one per
/// process: tests start several servers in one process).
pub fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            // Histograms with buckets (not per-process quantiles), so that
            // a dashboard can aggregate them across processes.
            const SECONDS: &[f64] = &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ];
            const FUEL: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12];
            // 64 KiB (one wasm page) to 4 GiB (the largest limit), by 4.
            const BYTES: &[f64] = &[
                65536.0,
                262144.0,
                1048576.0,
                4194304.0,
                16777216.0,
                67108864.0,
                268435456.0,
                1073741824.0,
                4294967296.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("runner_job_fuel".into()), FUEL)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES))
                .map_err(|e| tracing::warn!(error = %e, "metrics buckets not set"))
                .ok()?
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

/// How many stop signals (SIGINT, SIGTERM) the process had, counted by the
/// listener [`listen_for_stop`] starts.
static STOPS: std::sync::OnceLock<tokio::sync::watch::Receiver<u32>> = std::sync::OnceLock::new();

/// Listens for SIGINT and SIGTERM from now on, for the rest of the
/// process's life (the first call starts the listener; later calls share
/// it), and returns the count of stops. Called first thing by each
/// long-running command, so that a stop that comes while the process
/// still starts (connects, compiles its tasks' modules) is kept and ends it
/// once started. Before, the listeners lived only while a stop was awaited:
/// a signal between two waits was dropped, and the process, no longer
/// killed by it either, ran on. A second stop while stopping ends the
/// process at once (exit 1): whatever it still runs is cut short, and
/// leased jobs go back to their queues when their leases run out.
pub fn listen_for_stop() -> tokio::sync::watch::Receiver<u32> {
    STOPS
        .get_or_init(|| {
            use tokio::signal::unix::{SignalKind, signal};
            let (tx, rx) = tokio::sync::watch::channel(0u32);
            let stopped = move || {
                tx.send_modify(|n| *n = n.saturating_add(1));
                if *tx.borrow() >= 2 {
                    eprintln!("a second stop signal: stopping at once");
                    std::process::exit(1);
                }
            };
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = int.recv() => {}
                        }
                        stopped();
                    }
                }),
                // Without signal handlers there is no graceful way to stop.
                _ => tokio::spawn(async move {
                    while tokio::signal::ctrl_c().await.is_ok() {
                        stopped();
                    }
                }),
            };
            rx
        })
        .clone()
}

/// Resolves once the process was told to stop (SIGINT or SIGTERM), at
/// once if it already was (see [`listen_for_stop`]).
pub async fn shutdown_signal() {
    let mut stops = listen_for_stop();
    if stops.wait_for(|n| *n > 0).await.is_err() {
        // The listener is gone (its runtime ended): no stop can come.
        std::future::pending::<()>().await;
    }
}

/// Tells systemd how the process is (`READY=1`, `STOPPING=1`) when it runs
/// as a `Type=notify` unit, i.e. when `NOTIFY_SOCKET` names the socket
/// (a path, or `@name` in the abstract namespace); nothing otherwise. See
/// sd_notify(3): a worker is ready once it consumes, a scheduler once it
/// reads its beats, the API once it listens, each after Redis answered.
pub fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let bytes = socket.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&socket)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state:?} through NOTIFY_SOCKET: {e}");
    }
}

/// The long-lived parts of one process (API server, worker, scheduler
/// loop), stopped together: each part gets a future that resolves when the
/// process stops ([`Process::stopping`]).
pub struct Process {
    stop: tokio::sync::watch::Sender<bool>,
    parts: tokio::task::JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Default for Process {
    fn default() -> Self {
        Self::new()
    }
}

impl Process {
    pub fn new() -> Self {
        Process {
            stop: tokio::sync::watch::channel(false).0,
            parts: tokio::task::JoinSet::new(),
        }
    }

    /// Resolves once the process is stopping.
    pub fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Starts a part; `name` says which one in errors.
    pub fn spawn(
        &mut self,
        name: &'static str,
        part: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.parts.spawn(async move { (name, part.await) });
    }

    /// Runs until `shutdown` resolves (SIGINT/SIGTERM in the commands) or a
    /// part ends by itself; then tells every part to stop and waits for all
    /// of them. A part that failed or ended early is the error returned.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut first: Option<anyhow::Error> = None;
        tokio::select! {
            () = shutdown => eprintln!("shutting down"),
            Some(ended) = self.parts.join_next() => {
                first = Some(part_error(ended));
            }
        }
        let _ = self.stop.send(true);
        notify_systemd("STOPPING=1");
        while let Some(ended) = self.parts.join_next().await {
            if let Err(e) = flatten(ended)
                && first.is_none()
            {
                first = Some(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// [`Process::run_until`] SIGINT or SIGTERM.
    pub async fn run_until_shutdown(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

type Ended = Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>;

fn flatten(ended: Ended) -> anyhow::Result<()> {
    match ended {
        Ok((name, result)) => result.with_context(|| format!("the {name}")),
        Err(e) => Err(anyhow::anyhow!("a part of the process panicked: {e}")),
    }
}

/// A part that ended before the process was told to stop: its error, or
/// that it ended at all.
fn part_error(ended: Ended) -> anyhow::Error {
    match ended {
        Ok((name, Ok(()))) => anyhow::anyhow!("the {name} stopped unexpectedly"),
        other => flatten(other)
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("a part of the process stopped unexpectedly")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a fixed `concurrency` a worker's slots adapt; with one they
    /// are fixed unless `max_concurrency` is set too.
    #[test]
    fn a_worker_adapts_unless_its_concurrency_is_fixed() {
        let slots = |text: &str| {
            let c = worker_config(&Config::from_toml(text).unwrap()).unwrap();
            (c.concurrency, c.max_concurrency)
        };
        let cores = WorkerConfig::default().concurrency;
        assert_eq!(
            slots(""),
            (cores, Some(crate::worker::slots::default_max(cores)))
        );
        assert_eq!(slots("[worker]\nconcurrency = 3\n"), (3, None));
        assert_eq!(
            slots("[worker]\nconcurrency = 3\nmax_concurrency = 12\n"),
            (3, Some(12))
        );
    }
}
