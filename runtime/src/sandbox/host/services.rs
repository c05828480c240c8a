//! The capability traits of this module, implemented on top of the
//! services of `runner-host-fns`, and the configuration that builds them.
//!
//! [`HostServices`] holds every configured service, built once per process
//! from the `[host]` section of `runner.toml`; [`TaskGrants`] is one task's
//! `[tasks.NAME.grants]`. [`HostServices::env_for`] binds the two into the
//! [`HostEnv`] of one run: a service that is not configured answers
//! `unavailable`, a configured one the task is not granted `denied`.
//!
//! # `runner.toml`
//!
//! ```toml
//! [host.files.roots]          # named roots: name = directory
//! logs = "/var/log/myapp"
//! reports = "/srv/reports"
//! # [host.files] max_file_bytes = 67108864
//!
//! [host.kv]                   # in memory; or redis_url = "redis://..."
//! # redis_url = "redis://127.0.0.1:6379/0"
//! # prefix = "runner:kv"
//!
//! [host.mail]                 # SMTP (see runner_host_fns::mail::MailConfig)
//! host = "smtp.example.com"   # required for SMTP
//! port = 587                  # the default
//! tls = "auto"                # auto | implicit | starttls-required | starttls-opportunistic | none
//! username = "runner"
//! password = "..."
//! timeout = 30                # seconds
//! from = { email = "noreply@example.com", name = "Runner" }
//! # reply_to = { email = "support@example.com" }
//! # return_path = "bounces@example.com"
//! # transport = "dry-run"     # send nothing: write each message to
//! # dir = ".runner/mail"      # <dir>/<message id>.eml (host, port, tls,
//! #                           # credentials are then ignored)
//!
//! [host.http]                 # every field optional (HttpConfig)
//! # max_response_bytes = 10485760
//! # default_timeout = 30
//!
//! [host.pdf]                  # every field optional (PdfConfig)
//! # font_dirs = ["/usr/share/fonts"]
//!
//! [tasks.cleanup-logs.grants]
//! files = { logs = "read-write", reports = "read-only" }
//!
//! [tasks.reminder.grants]
//! kv = {}                     # or { max_keys = 1000, max_bytes = 1048576 }
//! mail = { allowed_senders = ["*@example.com"] }
//! http = { allow = ["https://hooks.slack.com"], private_networks = [] }
//! pdf = true
//! jobs = true
//! ```
//!
//! A section that is absent leaves the service unconfigured; a grant that is
//! absent is not given. Unknown keys under `[host]` (including
//! `[host.mail]`) and in a task's grants are errors, so that a typo does not
//! silently leave a task without (or with) a capability; `dir` with the SMTP
//! transport, or a dry-run transport without `dir`, is refused when the
//! services are built.
//!
//! # Where grants apply
//!
//! `runner run --config F --task NAME` runs with `[tasks.NAME.grants]`. In
//! a worker, a job runs with the grants of the task binding that bound the
//! job's module (bindings hold a [`TaskGrants`]; `runner.toml`'s
//! `[tasks.NAME.grants]` reach them when the task is bound). `jobs = true`
//! lets a task enqueue child jobs; only a worker (which has a queue)
//! provides it, `runner run` answers `unavailable`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use runner_host_fns as fns;
use runner_host_fns::files::{Access, FilesConfig, FilesGrant, FilesService};
use runner_host_fns::http::{HttpConfig, HttpGrant, HttpRequest, HttpService};
use runner_host_fns::kv::{KvQuota, KvService, RedisKv};
use runner_host_fns::mail::{
    MailAddress, MailAttachment, MailConfig, MailGrant, Mailer, OutgoingMail,
};
use runner_host_fns::pdf::{PdfConfig, PdfService};
use serde::{Deserialize, Serialize};

use super::{
    Capability, FileStore, HostEnv, HttpClient, JobEnqueuer, KvNamespace, MailSender, PdfRenderer,
};
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::{files, http, mail, pdf};

impl From<fns::HostError> for HostError {
    fn from(e: fns::HostError) -> Self {
        match e {
            fns::HostError::Denied(m) => HostError::Denied(m),
            fns::HostError::Invalid(m) => HostError::Invalid(m),
            fns::HostError::Transient(m) => HostError::Transient(m),
            fns::HostError::Permanent(m) => HostError::Permanent(m),
            fns::HostError::Unavailable(m) => HostError::Unavailable(m),
        }
    }
}

/// The `runner.toml` sections this module reads; other sections are left
/// to their owners.
#[derive(Debug, Default, Deserialize)]
pub struct RunnerConfig {
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskConfig>,
}

impl RunnerConfig {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.check()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("{}", path.display()))
    }

    /// Refuses grants that could never work, when loading rather than on
    /// the task's first call.
    fn check(&self) -> anyhow::Result<()> {
        for (name, task) in &self.tasks {
            let grants = &task.grants;
            if let Some(http) = &grants.http {
                http.validate()
                    .map_err(|e| anyhow::anyhow!("tasks.{name}.grants.http: {e}"))?;
            }
            for root in grants.files.keys() {
                let configured = self
                    .host
                    .files
                    .as_ref()
                    .is_some_and(|f| f.roots.contains_key(root));
                if !configured {
                    anyhow::bail!(
                        "tasks.{name}.grants.files: root `{root}` is not in [host.files.roots]"
                    );
                }
            }
        }
        Ok(())
    }

    /// The grants of task `name`, or none when it has no section.
    pub fn grants(&self, name: &str) -> Option<&TaskGrants> {
        self.tasks.get(name).map(|t| &t.grants)
    }
}

/// `[host]`: which services this runner provides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub files: Option<FilesConfig>,
    pub kv: Option<KvConfig>,
    pub mail: Option<MailConfig>,
    pub http: Option<HttpConfig>,
    pub pdf: Option<PdfConfig>,
}

/// `[host.kv]`: in memory (one process) unless `redis_url` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvConfig {
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    pub prefix: Option<String>,
}

/// `[tasks.NAME]`; only its grants are read here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskConfig {
    #[serde(default)]
    pub grants: TaskGrants,
}

/// What one task may use. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskGrants {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<MailGrant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGrant>,
    /// Root name -> access.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Access>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pdf: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jobs: bool,
}

/// The kv grant: its quota, each limit defaulting to [`KvQuota::default`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvGrant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl KvGrant {
    pub fn quota(&self) -> KvQuota {
        let default = KvQuota::default();
        KvQuota {
            max_keys: self.max_keys.unwrap_or(default.max_keys),
            max_bytes: self.max_bytes.unwrap_or(default.max_bytes),
        }
    }
}

const DEFAULT_KV_PREFIX: &str = "runner:kv";

/// Every configured service; built once per process, shared by all runs.
#[derive(Clone, Default)]
pub struct HostServices {
    pub files: Option<Arc<FilesService>>,
    pub kv: Option<Arc<KvService>>,
    pub mail: Option<Arc<Mailer>>,
    pub http: Option<Arc<HttpService>>,
    pub pdf: Option<Arc<PdfService>>,
}

impl HostServices {
    /// Builds the services `config` names (connects to Redis if the kv
    /// store is there).
    pub async fn from_config(config: &HostConfig) -> anyhow::Result<Self> {
        let files = match &config.files {
            Some(c) => Some(Arc::new(
                FilesService::new(c.clone()).context("[host.files]")?,
            )),
            None => None,
        };
        let kv = match &config.kv {
            Some(KvConfig {
                redis_url: Some(url),
                prefix,
            }) => {
                let prefix = prefix.as_deref().unwrap_or(DEFAULT_KV_PREFIX);
                let store = RedisKv::connect(url, prefix)
                    .await
                    .with_context(|| format!("[host.kv]: cannot connect to {url}"))?;
                Some(Arc::new(KvService::new(Arc::new(store))))
            }
            Some(KvConfig {
                redis_url: None, ..
            }) => Some(Arc::new(KvService::in_memory())),
            None => None,
        };
        let mail = match &config.mail {
            Some(c) => Some(Arc::new(Mailer::from_config(c).context("[host.mail]")?)),
            None => None,
        };
        let http = config
            .http
            .as_ref()
            .map(|c| Arc::new(HttpService::new(c.clone())));
        let pdf = match &config.pdf {
            Some(c) => {
                let c = c.clone();
                // Indexing the fonts reads every font file.
                Some(Arc::new(
                    tokio::task::spawn_blocking(move || PdfService::new(&c)).await?,
                ))
            }
            None => None,
        };
        Ok(Self {
            files,
            kv,
            mail,
            http,
            pdf,
        })
    }

    /// The capabilities of one run of `task` with `grants`. `jobs` is the
    /// queue as this run sees it, when there is one. Progress is left unset.
    pub fn env_for(
        &self,
        task: &str,
        grants: &TaskGrants,
        jobs: Option<Arc<dyn JobEnqueuer>>,
    ) -> HostEnv {
        let task: Arc<str> = Arc::from(task);
        let kv = bind(&self.kv, grants.kv.as_ref(), |service, grant| {
            Arc::new(TaskKv {
                service,
                task: task.clone(),
                quota: grant.quota(),
            }) as Arc<dyn KvNamespace>
        });
        let mail = bind(&self.mail, grants.mail.as_ref(), |service, grant| {
            Arc::new(TaskMail {
                service,
                grant: grant.clone(),
            }) as Arc<dyn MailSender>
        });
        let http = bind(&self.http, grants.http.as_ref(), |service, grant| {
            Arc::new(TaskHttp {
                service,
                grant: grant.clone(),
            }) as Arc<dyn HttpClient>
        });
        let pdf = bind(&self.pdf, grants.pdf.then_some(&()), |service, ()| {
            Arc::new(TaskPdf { service }) as Arc<dyn PdfRenderer>
        });
        let files_grant = (!grants.files.is_empty()).then(|| FilesGrant {
            roots: grants.files.clone(),
        });
        let files = bind(&self.files, files_grant.as_ref(), |service, grant| {
            Arc::new(TaskFiles {
                service,
                grant: grant.clone(),
            }) as Arc<dyn FileStore>
        });
        let jobs = match jobs {
            None => Capability::NotConfigured,
            Some(_) if !grants.jobs => Capability::NotGranted,
            Some(queue) => Capability::Granted(queue),
        };
        HostEnv {
            progress: None,
            kv,
            mail,
            http,
            pdf,
            files,
            jobs,
        }
    }
}

fn bind<S, G, T: ?Sized>(
    service: &Option<Arc<S>>,
    grant: Option<&G>,
    adapt: impl FnOnce(Arc<S>, &G) -> Arc<T>,
) -> Capability<T> {
    match (service, grant) {
        (None, _) => Capability::NotConfigured,
        (Some(_), None) => Capability::NotGranted,
        (Some(service), Some(grant)) => Capability::Granted(adapt(Arc::clone(service), grant)),
    }
}

/// Reads `runner.toml` at `path` when given, and builds the services and
/// the grants of `task` (none without a task or a config file).
pub async fn load(
    path: Option<&Path>,
    task: Option<&str>,
) -> anyhow::Result<(HostServices, TaskGrants)> {
    let Some(path) = path else {
        return Ok((HostServices::default(), TaskGrants::default()));
    };
    let config = RunnerConfig::load(path)?;
    let grants = match task {
        Some(name) => config
            .grants(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{}: no [tasks.{name}] section", path.display()))?,
        None => TaskGrants::default(),
    };
    let services = HostServices::from_config(&config.host).await?;
    Ok((services, grants))
}

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

struct TaskMail {
    service: Arc<Mailer>,
    grant: MailGrant,
}

impl MailSender for TaskMail {
    fn send(&self, message: mail::Message) -> BoxFuture<'_, Result<String, HostError>> {
        Box::pin(async move {
            let outgoing = OutgoingMail {
                to: message.to.into_iter().map(address).collect(),
                cc: message.cc.into_iter().map(address).collect(),
                bcc: message.bcc.into_iter().map(address).collect(),
                from: message.from.map(address),
                reply_to: message.reply_to.map(address),
                subject: message.subject,
                text: message.text,
                html: message.html,
                attachments: message
                    .attachments
                    .into_iter()
                    .map(|a| MailAttachment {
                        filename: a.filename,
                        content_type: a.content_type,
                        data: a.data,
                    })
                    .collect(),
            };
            Ok(self.service.send(&self.grant, &outgoing).await?)
        })
    }
}

fn address(a: mail::Address) -> MailAddress {
    MailAddress {
        email: a.email,
        name: a.name,
    }
}

struct TaskHttp {
    service: Arc<HttpService>,
    grant: HttpGrant,
}

impl HttpClient for TaskHttp {
    fn send(&self, request: http::Request) -> BoxFuture<'_, Result<http::Response, HostError>> {
        Box::pin(async move {
            let request = HttpRequest {
                method: request.method,
                url: request.url,
                headers: request.headers,
                body: request.body,
                timeout: request
                    .timeout_ms
                    .map(|ms| Duration::from_millis(u64::from(ms))),
            };
            let response = self.service.send(&self.grant, &request).await?;
            Ok(http::Response {
                status: response.status,
                headers: response.headers,
                body: response.body,
            })
        })
    }
}

struct TaskPdf {
    service: Arc<PdfService>,
}

impl PdfRenderer for TaskPdf {
    fn render(&self, document: pdf::Document) -> BoxFuture<'_, Result<Vec<u8>, HostError>> {
        use runner_host_fns::pdf::{Block, Document, Paper};
        Box::pin(async move {
            let document = Document {
                title: document.title,
                author: document.author,
                paper: match document.paper {
                    pdf::Paper::A4 => Paper::A4,
                    pdf::Paper::Letter => Paper::Letter,
                },
                landscape: document.landscape,
                blocks: document
                    .blocks
                    .into_iter()
                    .map(|b| match b {
                        pdf::Block::Heading(h) => Block::Heading {
                            level: h.level,
                            text: h.text,
                        },
                        pdf::Block::Paragraph(text) => Block::Paragraph(text),
                        pdf::Block::Table(t) => Block::Table {
                            header: t.header,
                            rows: t.rows,
                        },
                        pdf::Block::KeyValues(kv) => Block::KeyValues(kv),
                        pdf::Block::PageBreak => Block::PageBreak,
                    })
                    .collect(),
            };
            Ok(self.service.render(&document).await?)
        })
    }
}

struct TaskFiles {
    service: Arc<FilesService>,
    grant: FilesGrant,
}

fn entry(e: fns::files::Entry) -> files::Entry {
    files::Entry {
        path: e.path,
        size: e.size,
        modified_ms: e.modified_ms,
        is_dir: e.is_dir,
    }
}

impl FileStore for TaskFiles {
    fn write(
        &self,
        root: String,
        path: String,
        data: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), HostError>> {
        Box::pin(async move { Ok(self.service.write(&self.grant, &root, &path, data).await?) })
    }

    fn read(&self, root: String, path: String) -> BoxFuture<'_, Result<Vec<u8>, HostError>> {
        Box::pin(async move { Ok(self.service.read(&self.grant, &root, &path).await?) })
    }

    fn list(
        &self,
        root: String,
        dir: String,
    ) -> BoxFuture<'_, Result<Vec<files::Entry>, HostError>> {
        Box::pin(async move {
            let entries = self.service.list(&self.grant, &root, &dir).await?;
            Ok(entries.into_iter().map(entry).collect())
        })
    }

    fn delete(&self, root: String, path: String) -> BoxFuture<'_, Result<bool, HostError>> {
        Box::pin(async move { Ok(self.service.delete(&self.grant, &root, &path).await?) })
    }

    fn cleanup(
        &self,
        root: String,
        glob: String,
        older_than: Duration,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<files::CleanupReport, HostError>> {
        Box::pin(async move {
            let report = self
                .service
                .cleanup(&self.grant, &root, &glob, older_than, dry_run)
                .await?;
            Ok(files::CleanupReport {
                deleted: report.deleted.into_iter().map(entry).collect(),
                bytes_freed: report.bytes_freed,
                dry_run: report.dry_run,
            })
        })
    }

    fn disk_usage(&self, root: String) -> BoxFuture<'_, Result<files::DiskUsageReport, HostError>> {
        Box::pin(async move {
            let usage = self.service.disk_usage(&self.grant, &root).await?;
            Ok(files::DiskUsageReport {
                total_bytes: usage.total_bytes,
                free_bytes: usage.free_bytes,
                used_by_root: usage.used_by_root,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_format_parses_and_typos_are_refused() {
        let config = RunnerConfig::from_toml(
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
        let grants = config.grants("clean").unwrap();
        assert_eq!(grants.files.get("logs"), Some(&Access::ReadWrite));
        assert_eq!(grants.kv.unwrap().quota().max_keys, 5);
        assert!(grants.pdf && !grants.jobs);
        assert!(config.grants("other").is_none());

        let typo = RunnerConfig::from_toml("[tasks.t.grants]\nkvv = {}\n").unwrap_err();
        assert!(format!("{typo:#}").contains("kvv"), "{typo:#}");
        let root = RunnerConfig::from_toml("[tasks.t.grants]\nfiles = { logs = \"read-only\" }\n")
            .unwrap_err();
        assert!(format!("{root:#}").contains("logs"), "{root:#}");
    }

    #[tokio::test]
    async fn the_mail_transport_is_smtp_or_dry_run_into_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = RunnerConfig::from_toml(&format!(
            "[host.mail]\ntransport = \"dry-run\"\ndir = {:?}\nfrom = {{ email = \"a@example.com\" }}\n",
            dir.path().join("outbox")
        ))
        .unwrap();
        let services = HostServices::from_config(&config.host).await.unwrap();
        assert!(services.mail.is_some());
        assert!(dir.path().join("outbox").is_dir());

        let typo = RunnerConfig::from_toml(
            "[host.mail]\ntransport = \"dryrun\"\nfrom = { email = \"a@example.com\" }\n",
        )
        .unwrap_err();
        assert!(format!("{typo:#}").contains("dry-run"), "{typo:#}");
        let unknown = RunnerConfig::from_toml(
            "[host.mail]\nhots = \"smtp.example.com\"\nfrom = { email = \"a@example.com\" }\n",
        )
        .unwrap_err();
        assert!(format!("{unknown:#}").contains("hots"), "{unknown:#}");

        for (text, expected) in [
            ("transport = \"dry-run\"", "mail.dir"),
            ("host = \"smtp.example.com\"\ndir = \"/tmp\"", "mail.dir"),
            ("port = 25", "mail.host"),
        ] {
            let config = RunnerConfig::from_toml(&format!(
                "[host.mail]\n{text}\nfrom = {{ email = \"a@example.com\" }}\n"
            ))
            .unwrap();
            let err = HostServices::from_config(&config.host)
                .await
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"));
            assert!(format!("{err:#}").contains(expected), "{text}: {err:#}");
        }
    }

    #[tokio::test]
    async fn unconfigured_is_unavailable_and_ungranted_is_denied() {
        let services = HostServices {
            kv: Some(Arc::new(KvService::in_memory())),
            ..HostServices::default()
        };
        let env = services.env_for("t", &TaskGrants::default(), None);
        assert!(matches!(env.kv, Capability::NotGranted));
        assert!(matches!(env.pdf, Capability::NotConfigured));
        assert!(matches!(env.jobs, Capability::NotConfigured));

        let grants = TaskGrants {
            kv: Some(KvGrant::default()),
            ..TaskGrants::default()
        };
        let env = services.env_for("t", &grants, None);
        let Capability::Granted(kv) = env.kv else {
            panic!("kv not granted");
        };
        assert!(kv.set_nx("k".into(), b"v".to_vec(), None).await.unwrap());
        assert!(!kv.set_nx("k".into(), b"w".to_vec(), None).await.unwrap());
        // Another task's namespace is its own.
        let other = services.env_for("u", &grants, None);
        let Capability::Granted(kv) = other.kv else {
            panic!("kv not granted");
        };
        assert_eq!(kv.get("k".into()).await.unwrap(), None);
    }
}
