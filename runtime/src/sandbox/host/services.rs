//! The services of one process and the configuration that builds them.
//!
//! [`HostServices`] holds every configured service of `runner-host-fns`,
//! built once per process from the `[host]` section of `runner.toml`;
//! [`TaskGrants`] (in the registry) is one task's `[tasks.NAME.grants]`. [`HostServices::env_for`] binds the two into the
//! [`HostEnv`] of one run: a service that is not configured answers
//! `unavailable`, a configured one the task is not granted `denied`.
//!
//! # `runner.toml`
//!
//! ```toml
//! [host.files.roots]          # named roots: name = directory
//! logs = "/var/log/myapp"
//! reports = "/srv/reports"
//! # [host.files] max_file_bytes = 67108864, max_walk_entries = 1000000,
//! #   walk_timeout = 30, max_list_entries = 100000, usage_refresh = 600
//! # [host.files.quotas]       # per root; roots not named have none
//! # reports = { max_bytes = 10737418240, max_files = 100000 }
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
//! # max_concurrent_renders = 2  # default: the number of CPUs
//! # max_render_time = 60        # seconds
//!
//! [tasks.cleanup-logs.grants]
//! files = { logs = "read-write", reports = "read-only" }
//!
//! [tasks.reminder.grants]
//! kv = {}                     # or { max_keys = 1000, max_bytes = 1048576 }
//! mail = { allowed_senders = ["*@example.com"] }
//! http = { allow = ["https://hooks.slack.com"], private_networks = [] }
//! pdf = true
//! jobs = { tasks = ["render"] }
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
//! `[tasks.NAME.grants]` reach them when the task is bound). `jobs = { tasks
//! = [..] }` lets a task enqueue child jobs of those tasks (see
//! [`crate::registry::JobsGrant`] for queues, children per run and depth);
//! only a worker (which has a queue) provides it, `runner run` answers
//! `unavailable`.

use std::sync::Arc;

use runner_host_fns::files::{FilesConfig, FilesService};
use runner_host_fns::http::{HttpConfig, HttpService};
use runner_host_fns::kv::KvService;
use runner_host_fns::mail::{MailConfig, Mailer};
use runner_host_fns::pdf::{PdfConfig, PdfService};
use serde::Deserialize;

pub use super::kv::KvConfig;
use super::{HostEnv, JobEnqueuer, Service, files, http, kv, mail, pdf};
use crate::registry::TaskGrants;

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
    /// store is there). Each capability's adapter file knows how.
    pub async fn from_config(config: &HostConfig) -> anyhow::Result<Self> {
        Ok(Self {
            files: files::service(config.files.as_ref())?,
            kv: kv::service(config.kv.as_ref()).await?,
            mail: mail::service(config.mail.as_ref())?,
            http: http::service(config.http.as_ref()),
            pdf: pdf::service(config.pdf.as_ref()).await?,
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
        HostEnv {
            progress: None,
            kv: kv::grant(&self.kv, task, grants),
            mail: mail::grant(&self.mail, grants),
            http: http::grant(&self.http, grants),
            pdf: pdf::grant(&self.pdf, grants),
            files: files::grant(&self.files, grants),
            jobs: match jobs {
                None => Service::NotConfigured,
                Some(_) if grants.jobs.is_none() => Service::NotGranted,
                Some(queue) => Service::Granted(queue),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::KvGrant;

    #[tokio::test]
    async fn unconfigured_is_unavailable_and_ungranted_is_denied() {
        let services = HostServices {
            kv: Some(Arc::new(KvService::in_memory())),
            ..HostServices::default()
        };
        let env = services.env_for("t", &TaskGrants::default(), None);
        assert!(matches!(env.kv, Service::NotGranted));
        assert!(matches!(env.pdf, Service::NotConfigured));
        assert!(matches!(env.jobs, Service::NotConfigured));

        let grants = TaskGrants {
            kv: Some(KvGrant::default()),
            ..TaskGrants::default()
        };
        let env = services.env_for("t", &grants, None);
        let Service::Granted(kv) = env.kv else {
            panic!("kv not granted");
        };
        assert!(kv.set_nx("k".into(), b"v".to_vec(), None).await.unwrap());
        assert!(!kv.set_nx("k".into(), b"w".to_vec(), None).await.unwrap());
        // Another task's namespace is its own.
        let other = services.env_for("u", &grants, None);
        let Service::Granted(kv) = other.kv else {
            panic!("kv not granted");
        };
        assert_eq!(kv.get("k".into()).await.unwrap(), None);
    }
}
