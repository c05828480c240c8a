//! `runner.toml`: one file configures every process of a deployment (API,
//! workers, scheduler, `runner dev`), each reading the sections it needs.
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:8080"
//! max_body = "64MiB"          # larger request bodies get 413 (at most 1GiB)
//! # open = true               # no tokens at all: only for a laptop
//!
//! [auth]                      # bearer tokens; usually from the env
//! admin = []                  # RUNNER_ADMIN_TOKENS=a,b
//! submit = []                 # RUNNER_SUBMIT_TOKENS=c
//!
//! [broker]
//! redis_url = "redis://127.0.0.1:6379/0"   # absent: the embedded broker
//! # data_dir = ".runner"      # where the embedded registry keeps uploads
//!
//! [worker]                    # `runner worker` (and the worker of dev/serve)
//! queues = ["default", "email"]   # default: `default`, [queues.*], the tasks' queues
//! concurrency = 4             # fixed; default: adaptive, from one per core
//! # max_concurrency = 32      # adaptive up to this; default: max(16, 8 per core)
//! # prefetch = 4              # jobs leased ahead; default: adaptive (docs/performance.md)
//! # lease = "30s"             # extended every third of it while a job runs
//! # grace = "30s"             # on SIGTERM, time for running jobs to finish
//! # heartbeat = "60s"
//! # module_cache = 64         # compiled modules kept in memory (per process)
//!
//! [queues.notifications]
//! rate_limit = "30/m"         # global: shared by every worker
//! # partitions = 8            # one hot queue over 8 slots (queue/partition.rs)
//!
//! [host.kv]                   # kv for tasks: in the broker's Redis when
//!                             # there is one (or its own redis_url), else memory
//! [host.mail]                 # services: see sandbox::host::services
//! # ...
//!
//! [tasks.reminder]
//! module = "builtin:reminder" # or "sha256:<hex>", or a .wasm path (relative to this file)
//! queue = "email"
//! rate_limit = "30/m"
//! time_limit = "60s"
//! fuel = 5000000000
//! memory = "64MiB"
//! retry = { max_retries = 3, backoff_base_ms = 60000, backoff_cap_ms = 600000, jitter = true }
//! [tasks.reminder.grants]
//! kv = {}
//! mail = { allowed_senders = ["*@example.com"] }
//!
//! [[beats]]                   # read by the scheduler
//! name = "morning-reminder"
//! task = "reminder"
//! cron = "0 9 * * *"
//! timezone = "Asia/Tokyo"
//! ```
//!
//! # Precedence
//!
//! Every command (`dev`, `serve`, `worker`, `scheduler`, `run`) reads its
//! settings the same way, each later source overriding the earlier:
//!
//! 1. the defaults (documented with each key);
//! 2. the file (`--config`, or `RUNNER_CONFIG`);
//! 3. the environment: `RUNNER_REDIS_URL`, `RUNNER_REDIS_TLS_CA`,
//!    `RUNNER_REDIS_TLS_CERT`, `RUNNER_REDIS_TLS_KEY`, `RUNNER_LISTEN`,
//!    `RUNNER_ADMIN_TOKENS`, `RUNNER_SUBMIT_TOKENS` (comma-separated, added
//!    to the file's), and for `[host.mail]` `RUNNER_SMTP_HOST`,
//!    `RUNNER_SMTP_PORT`, `RUNNER_SMTP_USERNAME`, `RUNNER_SMTP_PASSWORD`,
//!    `RUNNER_SMTP_FROM`. Secrets belong in the environment, not in the
//!    file;
//! 4. the command's flags (`--redis`, `--listen`, `-Q`, `-c`, `--prefetch`,
//!    `--lease`, `--grace`, ...), which set the key of the same meaning.
//!
//! [`Config::load_or_default`] does 1 to 3; each command applies its flags
//! and then builds its parts with the constructors of [`crate::app`].
//!
//! Unknown keys are errors (a typo must not silently drop a setting), and
//! every error names the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::queue::job::{RateLimit, validate_queue_name};
use crate::queue::{JobLimits, RetryPolicy};
use crate::registry::TaskGrants;
use crate::registry::{ModuleHash, TaskBinding};
use crate::sandbox::host::services::HostConfig;
use crate::scheduler::{Beat, validate_config_beats};

/// The whole file. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub worker: WorkerSection,
    #[serde(default)]
    pub scheduler: SchedulerSection,
    #[serde(default)]
    pub queues: BTreeMap<String, QueueConfig>,
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskSpec>,
    /// `[[beats]]`, fired by the scheduler.
    #[serde(default)]
    pub beats: Vec<Beat>,
    /// The directory relative paths in the file are taken from.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// `64MiB` style.
    #[serde(default = "default_max_body")]
    pub max_body: String,
    /// Serve without tokens. Only an operator who writes this gets it.
    #[serde(default)]
    pub open: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            max_body: default_max_body(),
            open: false,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_max_body() -> String {
    "64MiB".into()
}

impl ServerConfig {
    pub fn max_body_bytes(&self) -> anyhow::Result<usize> {
        let n = parse_size(&self.max_body)
            .with_context(|| format!("server.max_body = {:?}", self.max_body))?;
        anyhow::ensure!(
            n <= MAX_BODY_LIMIT,
            "server.max_body = {:?}: at most {} GiB (a request body is held in memory whole)",
            self.max_body,
            MAX_BODY_LIMIT >> 30
        );
        Ok(n)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub admin: Vec<String>,
    #[serde(default)]
    pub submit: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub redis_url: Option<String>,
    /// For a `rediss://` URL: the CA that signed the server's certificate
    /// (default: the system's roots).
    pub tls_ca: Option<PathBuf>,
    /// For a server that asks for one (mutual TLS): a client certificate
    /// and its key, PEM.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where the embedded registry keeps uploaded modules and bindings.
    pub data_dir: Option<PathBuf>,
}

/// The most jobs one worker may run at once (`max_concurrency`).
pub const MAX_CONCURRENCY: usize = 1000;

/// The largest `server.max_body`: a request body is held in memory whole.
pub const MAX_BODY_LIMIT: usize = 1024 * 1024 * 1024;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub queues: Option<Vec<String>>,
    /// Jobs run at once, fixed. Without it the count adapts (from one per
    /// core up to `max_concurrency`, `worker/slots.rs`).
    pub concurrency: Option<usize>,
    /// The most jobs an adaptive worker runs at once (default:
    /// `max(16, 8 per core)`); with `concurrency`, it adapts from there.
    pub max_concurrency: Option<usize>,
    /// Jobs leased ahead of a free slot; default: adaptive (sized from
    /// the run times, `worker/prefetch.rs`).
    pub prefetch: Option<usize>,
    /// `30s` style.
    pub lease: Option<String>,
    /// `30s` style.
    pub grace: Option<String>,
    /// `60s` style.
    pub heartbeat: Option<String>,
    /// This worker's name in listings; default: host-pid-random.
    pub id: Option<String>,
    /// How many compiled modules a process keeps loaded in memory (the
    /// ones used most recently; default 64). Others are loaded again when
    /// a job needs them: read back from the module cache on disk, or
    /// compiled.
    pub module_cache: Option<usize>,
    /// Where `runner worker` serves `/metrics`, `/healthz` and `/readyz`
    /// (`127.0.0.1:9101` style); none by default.
    pub metrics_listen: Option<String>,
}

/// `[scheduler]`: what `runner scheduler` reads besides the beats.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    /// Where `runner scheduler` serves `/metrics`, `/healthz` and
    /// `/readyz`; none by default.
    pub metrics_listen: Option<String>,
}

impl WorkerSection {
    /// At least [`MIN_LEASE`].
    pub fn lease(&self) -> anyhow::Result<Option<std::time::Duration>> {
        at_least("worker.lease", self.lease.as_deref(), MIN_LEASE)
    }

    pub fn grace(&self) -> anyhow::Result<Option<std::time::Duration>> {
        duration("worker.grace", self.grace.as_deref())
    }

    /// At least [`MIN_HEARTBEAT`].
    pub fn heartbeat(&self) -> anyhow::Result<Option<std::time::Duration>> {
        at_least("worker.heartbeat", self.heartbeat.as_deref(), MIN_HEARTBEAT)
    }
}

fn duration(key: &str, text: Option<&str>) -> anyhow::Result<Option<std::time::Duration>> {
    text.map(|t| parse_bounded_duration(t).map_err(|e| anyhow::anyhow!("{key} = {t:?}: {e}")))
        .transpose()
}

/// A duration of a setting or a command-line flag (`30s`, `2m`, `1h`): at
/// most 100 years. Past that, deadlines (`now + d`) overflow and panic, and
/// Redis refuses lease times; `humantime` alone takes billions of years.
pub fn parse_bounded_duration(t: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(t).map_err(|e| format!("{e} (expected e.g. \"30s\")"))?;
    if d > crate::queue::job::MAX_DELAY {
        return Err(format!("{t:?} is more than 100 years"));
    }
    Ok(d)
}

/// The shortest lease: a worker extends leases at most every 50 ms, and a
/// lease that runs out while its job runs sends the job to another worker
/// (`10ms`: every job ran twice, and each first run was stopped).
pub const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(1);
/// The shortest heartbeat: each is a Redis command (`1ms`: a thousand a
/// second per worker).
pub const MIN_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

fn at_least(
    key: &str,
    text: Option<&str>,
    min: std::time::Duration,
) -> anyhow::Result<Option<std::time::Duration>> {
    let d = duration(key, text)?;
    if d.is_some_and(|d| d < min) {
        bail!("{key} must be at least {}", humantime::format_duration(min));
    }
    Ok(d)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// `30/m`: every job of the queue, across all workers.
    pub rate_limit: Option<String>,
    /// Splits the queue into this many partitions, each a queue with its
    /// own hash tag (its own slot on a Redis Cluster): `queue/partition.rs`.
    pub partitions: Option<u32>,
}

/// `[tasks.NAME]`: a task name, its module, defaults and grants.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// `builtin:NAME`, `sha256:<hex>` (already uploaded) or a path to a
    /// component. Without it the section only gives grants (for `runner run
    /// --task`).
    pub module: Option<String>,
    pub queue: Option<String>,
    pub rate_limit: Option<String>,
    /// `60s` style.
    pub time_limit: Option<String>,
    /// `25s` style: after it, the task's capability calls are denied so
    /// that it finishes up before `time_limit`.
    pub soft_time_limit: Option<String>,
    pub fuel: Option<u64>,
    /// `64MiB` style.
    pub memory: Option<String>,
    pub retry: Option<RetryPolicy>,
    /// `1h` style: how long results are kept.
    pub result_ttl: Option<String>,
    /// Store no results (states are still kept).
    pub ignore_result: Option<bool>,
    /// The priority of the task's jobs (0 to 9, higher first; default 0).
    pub priority: Option<u64>,
    #[serde(default)]
    pub grants: TaskGrants,
}

/// Where a task's module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    Builtin(String),
    Hash(ModuleHash),
    Path(PathBuf),
}

impl Config {
    /// Reads `path` and applies the environment overrides.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config =
            Self::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
        config.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(config)
    }

    /// The file when given, else the defaults; then the environment.
    pub fn load_or_default(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = match path {
            Some(p) => Self::load(p)?,
            None => Self {
                base_dir: PathBuf::from("."),
                ..Self::default()
            },
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.check()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    /// Overrides from the environment (`get` is `std::env::var` outside
    /// tests).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(url) = non_empty("RUNNER_REDIS_URL") {
            self.broker.redis_url = Some(url);
        }
        for (name, key) in [
            ("RUNNER_REDIS_TLS_CA", &mut self.broker.tls_ca),
            ("RUNNER_REDIS_TLS_CERT", &mut self.broker.tls_cert),
            ("RUNNER_REDIS_TLS_KEY", &mut self.broker.tls_key),
        ] {
            if let Some(path) = non_empty(name) {
                *key = Some(PathBuf::from(path));
            }
        }
        if let Some(listen) = non_empty("RUNNER_LISTEN") {
            self.server.listen = listen;
        }
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        if let Some(v) = non_empty("RUNNER_ADMIN_TOKENS") {
            self.auth.admin.extend(list(v));
        }
        if let Some(v) = non_empty("RUNNER_SUBMIT_TOKENS") {
            self.auth.submit.extend(list(v));
        }
        if let Some(mail) = self.host.mail.as_mut() {
            if let Some(h) = non_empty("RUNNER_SMTP_HOST") {
                mail.host = h;
            }
            if let Some(p) = non_empty("RUNNER_SMTP_PORT") {
                mail.port = p
                    .trim()
                    .parse()
                    .with_context(|| format!("RUNNER_SMTP_PORT={p:?} is not a port number"))?;
            }
            if let Some(u) = non_empty("RUNNER_SMTP_USERNAME") {
                mail.username = Some(u);
            }
            if let Some(p) = get("RUNNER_SMTP_PASSWORD").filter(|p| !p.is_empty()) {
                mail.password = Some(p);
            }
            if let Some(f) = non_empty("RUNNER_SMTP_FROM") {
                mail.from = sender_from_env(f.trim(), mail.from.name.as_deref());
            }
        }
        Ok(())
    }

    /// Everything that can be refused before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        self.server.max_body_bytes()?;
        for t in self.auth.admin.iter().chain(&self.auth.submit) {
            if t.len() < 16 {
                bail!("auth: a token must be at least 16 characters long");
            }
        }
        for q in self.worker.queues.iter().flatten() {
            crate::queue::partition::validate_queue_or_partition(q)
                .with_context(|| format!("worker.queues: {q:?}"))?;
        }
        if self.worker.concurrency == Some(0) {
            bail!("worker.concurrency must be at least 1");
        }
        if let Some(c) = self.worker.concurrency
            && c > MAX_CONCURRENCY
        {
            bail!("worker.concurrency ({c}) must be at most {MAX_CONCURRENCY}");
        }
        if let Some(max) = self.worker.max_concurrency {
            let base = self.worker.concurrency.unwrap_or(1);
            if max == 0 || max < base {
                bail!(
                    "worker.max_concurrency ({max}) must be at least 1 and at least worker.concurrency ({base})"
                );
            }
            if max > MAX_CONCURRENCY {
                bail!("worker.max_concurrency ({max}) must be at most {MAX_CONCURRENCY}");
            }
        }
        self.worker.lease()?;
        self.worker.grace()?;
        self.worker.heartbeat()?;
        if self.worker.module_cache == Some(0) {
            bail!("worker.module_cache must be at least 1 (compiled modules kept in memory)");
        }
        if let Some(id) = &self.worker.id
            && (id.is_empty() || id.contains('|'))
        {
            bail!("worker.id {id:?} must be non-empty and must not contain `|`");
        }
        validate_config_beats(&self.beats)?;
        for (name, q) in &self.queues {
            validate_queue_name(name).with_context(|| format!("queues.{name}"))?;
            if let Some(spec) = &q.rate_limit {
                RateLimit::parse(format!("queue:{name}"), spec)
                    .with_context(|| format!("queues.{name}.rate_limit"))?;
            }
        }
        self.partitions()?;
        for (name, task) in &self.tasks {
            crate::names::TaskName::validate(name).with_context(|| format!("tasks.{name}"))?;
            task.defaults(name, &ModuleHash([0; 32]))
                .with_context(|| format!("tasks.{name}"))?;
            if let Some(m) = &task.module {
                parse_module_source(m).with_context(|| format!("tasks.{name}.module"))?;
            }
            task.grants
                .check()
                .with_context(|| format!("tasks.{name}"))?;
            for root in task.grants.files.keys() {
                let configured = self
                    .host
                    .files
                    .as_ref()
                    .is_some_and(|f| f.roots.contains_key(root));
                if !configured {
                    bail!("tasks.{name}.grants.files: root `{root}` is not in [host.files.roots]");
                }
            }
        }
        Ok(())
    }

    /// Global queue rate limits, `(queue, spec)`.
    pub fn queue_limits(&self) -> impl Iterator<Item = (&str, &str)> {
        self.queues
            .iter()
            .filter_map(|(n, q)| q.rate_limit.as_deref().map(|r| (n.as_str(), r)))
    }

    /// The partitioned queues (`[queues.x] partitions = N`).
    pub fn partitions(&self) -> anyhow::Result<crate::queue::partition::Partitions> {
        for (name, q) in &self.queues {
            if let Some(n) = q.partitions {
                crate::queue::partition::Partitions::new([(name, n)])
                    .with_context(|| format!("queues.{name}.partitions"))?;
            }
        }
        Ok(crate::queue::partition::Partitions::new(
            self.queues
                .iter()
                .filter_map(|(n, q)| q.partitions.map(|p| (n, p))),
        )?)
    }

    /// Resolves a path written in the file.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

impl TaskSpec {
    /// The binding this section describes, for `module` (a resolved hash).
    pub fn defaults(&self, name: &str, module: &ModuleHash) -> anyhow::Result<TaskBinding> {
        let mut b = TaskBinding::new(name, *module);
        if let Some(q) = &self.queue {
            validate_queue_name(q).context("queue")?;
            b.queue = q.clone();
        }
        if let Some(r) = &self.rate_limit {
            RateLimit::parse(format!("task:{name}"), r).context("rate_limit")?;
            b.rate_limit = Some(r.clone());
        }
        if let Some(r) = &self.retry {
            r.check()?;
            b.retry = r.clone();
        }
        let mut limits = JobLimits::default();
        for (name, text, into) in [
            ("time_limit", &self.time_limit, &mut limits.time_limit_ms),
            (
                "soft_time_limit",
                &self.soft_time_limit,
                &mut limits.soft_time_limit_ms,
            ),
        ] {
            if let Some(t) = text {
                let d = humantime::parse_duration(t)
                    .with_context(|| format!("{name} = {t:?}: expected e.g. \"30s\""))?;
                // Saturated, never wrapped: the maximum check below names it.
                *into = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            }
        }
        limits.fuel = self.fuel;
        if let Some(m) = &self.memory {
            limits.memory_bytes =
                Some(parse_size(m).with_context(|| format!("memory = {m:?}"))? as u64);
        }
        limits.check()?;
        b.limits = limits;
        if let Some(t) = &self.result_ttl {
            let d = humantime::parse_duration(t)
                .with_context(|| format!("result_ttl = {t:?}: expected e.g. \"1h\""))?;
            anyhow::ensure!(
                d <= crate::queue::job::MAX_DELAY,
                "result_ttl = {t:?}: at most {} s (100 years)",
                crate::queue::job::MAX_DELAY.as_secs()
            );
            b.result_ttl_ms = Some(d.as_millis() as u64);
        }
        b.ignore_result = self.ignore_result.unwrap_or(false);
        if let Some(p) = self.priority {
            b.priority = crate::queue::job::check_priority("priority", p)?;
        }
        b.grants = self.grants.clone();
        Ok(b)
    }
}

pub fn parse_module_source(s: &str) -> anyhow::Result<ModuleSource> {
    if let Some(name) = s.strip_prefix("builtin:") {
        if crate::builtin::module(name).is_none() {
            bail!(
                "no built-in task `{name}` (built-ins: {})",
                crate::builtin::names().join(", ")
            );
        }
        return Ok(ModuleSource::Builtin(name.to_string()));
    }
    if s.starts_with("sha256:") {
        let h: ModuleHash = s
            .parse()
            .with_context(|| format!("{s:?} is not sha256:<64 hex digits>"))?;
        return Ok(ModuleSource::Hash(h));
    }
    if s.is_empty() {
        bail!("empty module");
    }
    Ok(ModuleSource::Path(PathBuf::from(s)))
}

/// `64MiB`, `512KiB`, `1GB`, `1048576`.
pub fn parse_size(s: &str) -> anyhow::Result<usize> {
    let b: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{s:?} is not a size like \"64MiB\": {e}"))?;
    usize::try_from(b.as_u64()).context("size too large")
}

/// The sender `RUNNER_SMTP_FROM` names: `Name <address>`, or an address
/// alone, which keeps the display name the file gives (`file_name`).
fn sender_from_env(value: &str, file_name: Option<&str>) -> runner_host_fns::mail::MailAddress {
    use runner_host_fns::mail::MailAddress;
    match value.strip_suffix('>').and_then(|v| v.rsplit_once('<')) {
        Some((name, email)) => {
            let name = name.trim().trim_matches('"').trim();
            MailAddress::new(email.trim(), (!name.is_empty()).then_some(name))
        }
        None => MailAddress::new(value, file_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RUNNER_SMTP_FROM` with an address alone keeps the file's display
    /// name, and may give one of its own. Before, the name was dropped,
    /// and `Name <address>` was refused at start as an address.
    #[test]
    fn the_sender_from_the_environment_keeps_or_gives_a_name() {
        let file = "[host.mail]\nhost = \"smtp\"\nfrom = { email = \"noreply@example.com\", name = \"業務システム\" }\n";
        let from = |env: &'static str| {
            let mut c = Config::from_toml(file).unwrap();
            c.apply_env(|k| (k == "RUNNER_SMTP_FROM").then(|| env.to_string()))
                .unwrap();
            let from = c.host.mail.unwrap().from;
            (from.email, from.name)
        };
        assert_eq!(
            from("other@example.com"),
            ("other@example.com".into(), Some("業務システム".into()))
        );
        assert_eq!(
            from("\"Billing\" <billing@example.com>"),
            ("billing@example.com".into(), Some("Billing".into()))
        );
        assert_eq!(
            from(" Ops <ops@example.com> "),
            ("ops@example.com".into(), Some("Ops".into()))
        );
        assert_eq!(
            from("<bare@example.com>"),
            ("bare@example.com".into(), None)
        );
    }

    /// A worker duration past any deadline is refused by name at load:
    /// `humantime` takes billions of years, and `now + lease` (or
    /// `heartbeat * 3`) panicked once the worker used it.
    #[test]
    fn worker_durations_are_bounded() {
        for key in ["lease", "grace", "heartbeat"] {
            let err = Config::from_toml(&format!("[worker]\n{key} = \"300000000000y\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("worker.{key}")), "{err}");
            assert!(err.contains("more than 100 years"), "{err}");
            let ok = Config::from_toml(&format!("[worker]\n{key} = \"1h\"\n")).unwrap();
            assert!(ok.worker.lease().is_ok());
        }
        // Too short to work: a lease the worker cannot extend in time, a
        // heartbeat of a thousand commands a second.
        for (key, short) in [("lease", "10ms"), ("heartbeat", "1ms"), ("lease", "0s")] {
            let err = Config::from_toml(&format!("[worker]\n{key} = \"{short}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("worker.{key} must be at least 1s")),
                "{err}"
            );
        }
        Config::from_toml("[worker]\nlease = \"1s\"\nheartbeat = \"1s\"\n").unwrap();
    }

    #[test]
    fn a_task_section_may_ignore_results() {
        let hash: ModuleHash = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let c = Config::from_toml("[tasks.x]\nignore_result = true\n").unwrap();
        assert!(c.tasks["x"].defaults("x", &hash).unwrap().ignore_result);
        let c = Config::from_toml("[tasks.x]\nqueue = \"q\"\n").unwrap();
        assert!(!c.tasks["x"].defaults("x", &hash).unwrap().ignore_result);
        let e = Config::from_toml("[tasks.x]\nignore_result = \"yes\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("ignore_result"), "{e:#}");
    }

    #[test]
    fn max_concurrency_is_checked() {
        for (text, why) in [
            ("[worker]\nmax_concurrency = 0\n", "max_concurrency (0)"),
            (
                "[worker]\nconcurrency = 8\nmax_concurrency = 4\n",
                "at least worker.concurrency (8)",
            ),
            ("[worker]\nmax_concurrency = 5000\n", "at most 1000"),
            (
                "[worker]\nconcurrency = 5000\n",
                "worker.concurrency (5000) must be at most 1000",
            ),
            ("[server]\nmax_body = \"1TiB\"\n", "at most 1 GiB"),
        ] {
            let e = Config::from_toml(text)
                .and_then(|c| c.check().map(|_| c))
                .unwrap_err();
            assert!(format!("{e:#}").contains(why), "{text}: {e:#}");
        }
    }

    #[test]
    fn a_task_section_sets_its_jobs_priority_up_to_9() {
        let hash: ModuleHash = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let c = Config::from_toml("[tasks.x]\npriority = 9\n").unwrap();
        assert_eq!(c.tasks["x"].defaults("x", &hash).unwrap().priority, 9);
        // Refused when the file is read.
        let e = Config::from_toml("[tasks.x]\npriority = 12\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("priority is 12, above its maximum of 9"),
            "{e:#}"
        );
    }

    #[test]
    fn a_full_file_parses_and_env_overrides_it() {
        let text = r#"
[server]
listen = "0.0.0.0:9000"
max_body = "8MiB"
[broker]
redis_url = "redis://127.0.0.1:1/0"
[queues.notifications]
rate_limit = "30/m"
[tasks.notify]
module = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
queue = "notifications"
time_limit = "10s"
soft_time_limit = "8s"
memory = "32MiB"
[tasks.notify.grants]
http = { allow = ["https://hooks.slack.com"] }
[[beats]]
name = "b"
task = "notify"
every = "30s"
"#;
        let mut c = Config::from_toml(text).unwrap();
        assert_eq!(c.server.max_body_bytes().unwrap(), 8 * 1024 * 1024);
        let b = c.tasks["notify"]
            .defaults("notify", &ModuleHash::of(b"x"))
            .unwrap();
        assert_eq!(b.queue, "notifications");
        assert_eq!(b.limits.time_limit_ms, Some(10_000));
        assert_eq!(b.limits.soft_time_limit_ms, Some(8_000));
        assert_eq!(b.limits.memory_bytes, Some(32 * 1024 * 1024));
        assert!(b.grants.http.is_some());
        assert_eq!(c.beats.len(), 1);
        c.apply_env(|k| match k {
            "RUNNER_REDIS_URL" => Some("redis://other:6379".into()),
            "RUNNER_ADMIN_TOKENS" => Some("aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.broker.redis_url.as_deref(), Some("redis://other:6379"));
        assert_eq!(c.auth.admin.len(), 2);
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::from_toml("[server]\nlisten = \"x\"\nmax_bodyy = 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("max_bodyy"), "{e:#}");
        let e = Config::from_toml("[queues.email]\nrate_limit = \"lots\"\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("queues.email.rate_limit"),
            "{e:#}"
        );
        let e = Config::from_toml("[worker]\nmodule_cache = 0\n").unwrap_err();
        assert!(format!("{e:#}").contains("worker.module_cache"), "{e:#}");
        let e = Config::from_toml("[queues.hot]\npartitions = 65\n").unwrap_err();
        assert!(format!("{e:#}").contains("queues.hot.partitions"), "{e:#}");
        let e = Config::from_toml("[tasks.x]\ntime_limit = \"soon\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("time_limit"), "{e:#}");
        let e = Config::from_toml("[tasks.x]\nsoft_time_limit = \"2d\"\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("limits.soft_time_limit_ms"),
            "{e:#}"
        );
        // Once wrapped to 384 ms.
        let e = Config::from_toml("[tasks.x]\ntime_limit = \"18446744073709552s\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("limits.time_limit_ms"), "{e:#}");
        let e = Config::from_toml("[tasks.x]\nresult_ttl = \"1000y\"\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("result_ttl = \"1000y\": at most"),
            "{e:#}"
        );
        let e = Config::from_toml("[tasks.x]\nmodule = \"builtin:nope\"\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("no built-in task `nope`"),
            "{e:#}"
        );
        let e = Config::from_toml("[auth]\nadmin = [\"short\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("16 characters"), "{e:#}");
    }

    #[test]
    fn the_documented_format_parses_and_typos_are_refused() {
        let config = Config::from_toml(
            r#"
            [host.files.roots]
            logs = "/tmp/logs"
            [host.kv]
            [host.http]
            [host.pdf]
            [tasks.clean.grants]
            files = { logs = "read-write" }
            kv = { max_keys = 5 }
            pdf = true
            http = { allow = ["https://hooks.slack.com"] }
            "#,
        )
        .unwrap();
        let grants = &config.tasks["clean"].grants;
        assert_eq!(
            grants.files.get("logs"),
            Some(&runner_host_fns::files::Access::ReadWrite)
        );
        assert_eq!(grants.kv.unwrap().quota().max_keys, 5);
        assert!(grants.pdf && grants.jobs.is_none());
        assert!(!config.tasks.contains_key("other"));

        let typo = Config::from_toml("[tasks.t.grants]\nkvv = {}\n").unwrap_err();
        assert!(format!("{typo:#}").contains("kvv"), "{typo:#}");
        let root =
            Config::from_toml("[tasks.t.grants]\nfiles = { logs = \"read-only\" }\n").unwrap_err();
        assert!(format!("{root:#}").contains("logs"), "{root:#}");
    }

    #[tokio::test]
    async fn the_mail_transport_is_smtp_or_dry_run_into_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(&format!(
            "[host.mail]\ntransport = \"dry-run\"\ndir = {:?}\nfrom = {{ email = \"a@example.com\" }}\n",
            dir.path().join("outbox")
        ))
        .unwrap();
        let services = crate::sandbox::host::HostServices::from_config(&config.host)
            .await
            .unwrap();
        assert!(services.mail.is_some());
        assert!(dir.path().join("outbox").is_dir());

        let typo = Config::from_toml(
            "[host.mail]\ntransport = \"dryrun\"\nfrom = { email = \"a@example.com\" }\n",
        )
        .unwrap_err();
        assert!(format!("{typo:#}").contains("dry-run"), "{typo:#}");
        let unknown = Config::from_toml(
            "[host.mail]\nhots = \"smtp.example.com\"\nfrom = { email = \"a@example.com\" }\n",
        )
        .unwrap_err();
        assert!(format!("{unknown:#}").contains("hots"), "{unknown:#}");

        for (text, expected) in [
            ("transport = \"dry-run\"", "mail.dir"),
            ("host = \"smtp.example.com\"\ndir = \"/tmp\"", "mail.dir"),
            ("port = 25", "mail.host"),
        ] {
            let config = Config::from_toml(&format!(
                "[host.mail]\n{text}\nfrom = {{ email = \"a@example.com\" }}\n"
            ))
            .unwrap();
            let err = crate::sandbox::host::HostServices::from_config(&config.host)
                .await
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"));
            assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
        }
    }
}
