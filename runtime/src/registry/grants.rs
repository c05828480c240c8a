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
    (Capability::Jobs, "jobs", Some("grants.jobs = true")),
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
            Capability::Jobs => grants.jobs,
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
