//! What a task may reach: its grants, and the one table of capabilities.
//!
//! A capability is one interface of the `runner:task` WIT package. The
//! [`Capability`] table says, for each, its interface name, whether it is
//! always available or must be granted, and how an operator grants it. The
//! sandbox uses it to accept a component's imports, the deploy path to
//! refuse a binding whose grants do not cover what its module imports, and
//! the messages of both name the grant to add. Adding a capability touches
//! the WIT, its host-fns service, its adapter in `sandbox/host/` and one row
//! here (plus its field of [`TaskGrants`] when it takes parameters).

use std::collections::BTreeMap;
use std::fmt;

use runner_host_fns::files::Access;
use runner_host_fns::http::HttpGrant;
use runner_host_fns::kv::KvQuota;
use runner_host_fns::mail::MailGrant;
use serde::{Deserialize, Serialize};

/// The WIT package every task world imports from, and its version.
pub const TASK_PACKAGE: &str = "runner:task";
pub const TASK_VERSION: &str = "0.1.0";

/// One interface of the `runner:task` package.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Shared type definitions; always available.
    Types,
    /// The job's own context (ids, progress, log); always available.
    Context,
    Kv,
    Mail,
    Http,
    Pdf,
    Files,
    Jobs,
}

/// The table: capability, WIT interface, and how it is granted (`None`:
/// always available).
const TABLE: &[(Capability, &str, Option<&str>)] = &[
    (Capability::Types, "types", None),
    (Capability::Context, "context", None),
    (Capability::Kv, "kv", Some("grants.kv = {}")),
    (
        Capability::Mail,
        "mail",
        Some("grants.mail = { allowed_senders = [..] }"),
    ),
    (
        Capability::Http,
        "http",
        Some("grants.http = { allow = [\"https://host\"] }"),
    ),
    (Capability::Pdf, "pdf", Some("grants.pdf = true")),
    (
        Capability::Files,
        "files",
        Some("grants.files = { root = \"read-write\" }"),
    ),
    (
        Capability::Jobs,
        "jobs",
        Some("grants.jobs = { tasks = [\"task\"] }"),
    ),
];

impl Capability {
    /// Every capability, in table order.
    pub fn all() -> impl Iterator<Item = Capability> {
        TABLE.iter().map(|(c, _, _)| *c)
    }

    fn row(self) -> &'static (Capability, &'static str, Option<&'static str>) {
        // The table has a row for every variant (checked by a unit test).
        TABLE
            .iter()
            .find(|(c, _, _)| *c == self)
            .unwrap_or(&TABLE[0])
    }

    /// The WIT interface name (`kv`).
    pub fn interface(self) -> &'static str {
        self.row().1
    }

    /// The full import name a component uses (`runner:task/kv@0.1.0`).
    pub fn import_name(self) -> String {
        format!("{TASK_PACKAGE}/{}@{TASK_VERSION}", self.interface())
    }

    /// Whether every task has it without a grant.
    pub fn always_available(self) -> bool {
        self.row().2.is_none()
    }

    /// What to write in `[tasks.NAME.grants]` to grant it.
    pub fn how_to_grant(self) -> &'static str {
        self.row().2.unwrap_or("nothing: always available")
    }

    /// Whether `grants` give it.
    pub fn granted_by(self, grants: &TaskGrants) -> bool {
        match self {
            Capability::Types | Capability::Context => true,
            Capability::Kv => grants.kv.is_some(),
            Capability::Mail => grants.mail.is_some(),
            Capability::Http => grants.http.is_some(),
            Capability::Pdf => grants.pdf,
            Capability::Files => !grants.files.is_empty(),
            Capability::Jobs => grants.jobs.is_some(),
        }
    }

    /// The capability an interface name (`kv`) names.
    pub fn from_interface(name: &str) -> Option<Capability> {
        TABLE
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(c, _, _)| *c)
    }

    /// The capability a component import names (`runner:task/kv@0.1.0`);
    /// `None` for anything else, including another version of the package.
    pub fn from_import(import: &str) -> Option<Capability> {
        let (iface, version) = import
            .strip_prefix(TASK_PACKAGE)?
            .strip_prefix('/')?
            .split_once('@')?;
        if version != TASK_VERSION {
            return None;
        }
        Self::from_interface(iface)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// Why a module may not be bound with some grants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the module imports `{import}`, which no grant can give")]
    Unknown { import: String },
    #[error(
        "the module imports `{import}` but the grants do not allow `{capability}` (add {})",
        capability.how_to_grant()
    )]
    NotGranted {
        import: String,
        capability: Capability,
    },
    #[error("grants.{grant}: {reason}")]
    Invalid { grant: &'static str, reason: String },
}

/// Names the first import of `imports` that `grants` do not cover.
pub fn check_grants(imports: &[String], grants: &TaskGrants) -> Result<(), GrantError> {
    let package = format!("{TASK_PACKAGE}/");
    for import in imports {
        if !import.starts_with(&package) {
            continue;
        }
        let Some(capability) = Capability::from_import(import) else {
            return Err(GrantError::Unknown {
                import: import.clone(),
            });
        };
        if !capability.granted_by(grants) {
            return Err(GrantError::NotGranted {
                import: import.clone(),
                capability,
            });
        }
    }
    Ok(())
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<JobsGrant>,
}

impl TaskGrants {
    /// Checks what the grants say on their own (before the module's
    /// imports are compared with them): URL rules parse, the jobs grant
    /// names valid tasks and queues within its maxima.
    pub fn check(&self) -> Result<(), GrantError> {
        if let Some(http) = &self.http {
            http.validate().map_err(|reason| GrantError::Invalid {
                grant: "http",
                reason,
            })?;
        }
        if let Some(jobs) = &self.jobs {
            jobs.check().map_err(|reason| GrantError::Invalid {
                grant: "jobs",
                reason,
            })?;
        }
        Ok(())
    }
}

/// The jobs grant: which tasks a task may enqueue (`jobs.enqueue`), on
/// which queues, how many per run and how deep the tree of jobs may grow.
/// Without it a task cannot enqueue at all; with it, nothing beyond it:
/// a task that may run `cleanup` cannot make `cleanup` delete for it
/// unless the operator wrote `cleanup` here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobsGrant {
    /// Task names it may enqueue (at least one).
    #[schema(value_type = Vec<crate::names::TaskName>, min_items = 1)]
    pub tasks: Vec<String>,
    /// Queues it may name in a child's `queue` option; a child that names
    /// none goes to its task's queue, which is always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// Children one run may enqueue: default [`JobsGrant::DEFAULT_MAX_CHILDREN`],
    /// at most [`JobsGrant::MAX_CHILDREN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 10_000)]
    pub max_children: Option<u32>,
    /// How deep below a job enqueued from outside (depth 0) its
    /// descendants may be: a child of such a job has depth 1. Default
    /// [`JobsGrant::DEFAULT_MAX_DEPTH`], at most [`JobsGrant::MAX_DEPTH`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 16)]
    pub max_depth: Option<u32>,
}

/// The fields of a jobs grant as written (`deny_unknown_fields`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsGrantFields {
    tasks: Vec<String>,
    #[serde(default)]
    queues: Vec<String>,
    #[serde(default)]
    max_children: Option<u32>,
    #[serde(default)]
    max_depth: Option<u32>,
}

impl<'de> Deserialize<'de> for JobsGrant {
    /// A table; `true` (the first version's form, which allowed any task
    /// on any queue) is refused with what to write instead.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JobsGrant;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table such as { tasks = [\"render\"] }")
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<JobsGrant, E> {
                Err(E::custom(
                    "jobs = true is no longer enough: name the tasks it may enqueue, \
                     jobs = { tasks = [\"name\"] } (optional: queues, max_children, max_depth)",
                ))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<JobsGrant, A::Error> {
                let f = JobsGrantFields::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(JobsGrant {
                    tasks: f.tasks,
                    queues: f.queues,
                    max_children: f.max_children,
                    max_depth: f.max_depth,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JobsGrant {
    pub const DEFAULT_MAX_CHILDREN: u32 = 100;
    pub const MAX_CHILDREN: u32 = 10_000;
    pub const DEFAULT_MAX_DEPTH: u32 = 3;
    pub const MAX_DEPTH: u32 = 16;

    /// A grant to enqueue `tasks` with the default limits.
    pub fn tasks<S: Into<String>>(tasks: impl IntoIterator<Item = S>) -> Self {
        JobsGrant {
            tasks: tasks.into_iter().map(Into::into).collect(),
            queues: Vec::new(),
            max_children: None,
            max_depth: None,
        }
    }

    pub fn max_children(&self) -> u32 {
        self.max_children.unwrap_or(Self::DEFAULT_MAX_CHILDREN)
    }

    pub fn max_depth(&self) -> u32 {
        self.max_depth.unwrap_or(Self::DEFAULT_MAX_DEPTH)
    }

    pub fn allows_task(&self, task: &str) -> bool {
        self.tasks.iter().any(|t| t == task)
    }

    pub fn allows_queue(&self, queue: &str) -> bool {
        self.queues.iter().any(|q| q == queue)
    }

    fn check(&self) -> Result<(), String> {
        if self.tasks.is_empty() {
            return Err("tasks: name at least one task it may enqueue".into());
        }
        for t in &self.tasks {
            crate::names::TaskName::validate(t).map_err(|e| format!("tasks: {e}"))?;
        }
        for q in &self.queues {
            crate::queue::job::validate_queue_name(q).map_err(|e| format!("queues: {e}"))?;
        }
        if self.max_children() > Self::MAX_CHILDREN {
            return Err(format!(
                "max_children is {}, above its maximum of {}",
                self.max_children(),
                Self::MAX_CHILDREN
            ));
        }
        if self.max_depth() > Self::MAX_DEPTH {
            return Err(format!(
                "max_depth is {}, above its maximum of {}",
                self.max_depth(),
                Self::MAX_DEPTH
            ));
        }
        Ok(())
    }
}

/// The kv grant: its quota, each limit defaulting to [`KvQuota::default`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_has_one_row_and_parses_back() {
        let all: Vec<Capability> = Capability::all().collect();
        assert_eq!(all.len(), TABLE.len());
        for cap in all {
            assert_eq!(cap.row().0, cap);
            assert_eq!(Capability::from_import(&cap.import_name()), Some(cap));
            assert_eq!(Capability::from_interface(cap.interface()), Some(cap));
        }
        assert_eq!(Capability::from_import("runner:task/kv@0.2.0"), None);
        assert_eq!(Capability::from_import("runner:task/nope@0.1.0"), None);
        assert_eq!(Capability::from_import("wasi:cli/stdout@0.2.3"), None);
        assert!(Capability::Context.granted_by(&TaskGrants::default()));
        assert!(!Capability::Kv.granted_by(&TaskGrants::default()));
    }

    #[test]
    fn an_ungranted_import_is_named() {
        let imports = vec![
            "runner:task/context@0.1.0".to_string(),
            "runner:task/kv@0.1.0".to_string(),
            "wasi:cli/stdout@0.2.3".to_string(),
        ];
        let err = check_grants(&imports, &TaskGrants::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("runner:task/kv@0.1.0"), "{err}");
        assert!(err.contains("grants.kv = {}"), "{err}");
        let grants = TaskGrants {
            kv: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(check_grants(&imports, &grants), Ok(()));
    }
}
