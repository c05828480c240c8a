//! The checked way into the registry, shared by the HTTP API, `runner.toml`
//! and `runner dev`: an upload is validated and compiled before it is
//! stored; a binding is refused when its module imports a capability its
//! grants do not give.

use std::sync::Arc;

use super::{ModuleInfo, Registry, RegistryError, TaskBinding, validate_task_name};
use crate::sandbox::host::TaskGrants;
use crate::sandbox::{LoadError, Sandbox};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Not a task component: 422.
    #[error("{0}")]
    Invalid(#[from] LoadError),
    /// A bad binding (name, unknown module, grants): 422 unless `UnknownModule`.
    #[error("{0}")]
    Refused(String),
    #[error("unknown module {0}: upload it first")]
    UnknownModule(String),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
}

/// Validates `bytes` as a task component (compiling it once: a broken
/// module fails here, not at run time) and stores it. Returns the record
/// and whether it was new.
pub async fn upload(
    sandbox: &Sandbox,
    registry: &Arc<dyn Registry>,
    bytes: Vec<u8>,
) -> Result<(ModuleInfo, bool), DeployError> {
    let sb = sandbox.clone();
    let (imports, bytes) =
        tokio::task::spawn_blocking(move || sb.load(&bytes).map(|m| (m.imports.clone(), bytes)))
            .await
            .map_err(|e| {
                DeployError::Refused(format!("compiling the component panicked: {e}"))
            })??;
    Ok(registry.store_module(&bytes, imports).await?)
}

/// The `runner:task` interface a WIT import names (`kv` for
/// `runner:task/kv@0.1.0`).
fn capability_of(import: &str) -> Option<&str> {
    let rest = import.strip_prefix("runner:task/")?;
    Some(rest.split('@').next().unwrap_or(rest))
}

/// Names the first import of `imports` that `grants` do not cover.
pub fn check_grants(imports: &[String], grants: &TaskGrants) -> Result<(), String> {
    for import in imports {
        let Some(cap) = capability_of(import) else {
            continue;
        };
        let (granted, how) = match cap {
            "types" | "context" => (true, ""),
            "kv" => (grants.kv.is_some(), "grants.kv = {}"),
            "mail" => (
                grants.mail.is_some(),
                "grants.mail = { allowed_senders = [..] }",
            ),
            "http" => (
                grants.http.is_some(),
                "grants.http = { allow = [\"https://host\"] }",
            ),
            "pdf" => (grants.pdf, "grants.pdf = true"),
            "files" => (
                !grants.files.is_empty(),
                "grants.files = { root = \"read-write\" }",
            ),
            "jobs" => (grants.jobs, "grants.jobs = true"),
            other => {
                return Err(format!(
                    "the module imports `{import}` (`{other}`), which no grant can give"
                ));
            }
        };
        if !granted {
            return Err(format!(
                "the module imports `{import}` but the grants do not allow `{cap}` (add {how})"
            ));
        }
    }
    Ok(())
}

/// Binds (or re-binds) a task name after checking the name, the module and
/// the grants against the module's imports.
pub async fn bind(
    sandbox: &Sandbox,
    registry: &Arc<dyn Registry>,
    binding: TaskBinding,
) -> Result<TaskBinding, DeployError> {
    validate_task_name(&binding.name).map_err(DeployError::Refused)?;
    if let Some(http) = &binding.grants.http {
        http.validate()
            .map_err(|e| DeployError::Refused(format!("grants.http: {e}")))?;
    }
    let info = registry
        .module_info(&binding.module)
        .await?
        .ok_or_else(|| DeployError::UnknownModule(binding.module.clone()))?;
    let imports = if info.imports.is_empty() {
        // Stored without validation (e.g. by a library caller): find out now.
        let bytes = registry
            .module(&info.hash)
            .await?
            .ok_or_else(|| DeployError::UnknownModule(binding.module.clone()))?;
        let sb = sandbox.clone();
        tokio::task::spawn_blocking(move || sb.load(&bytes).map(|m| m.imports.clone()))
            .await
            .map_err(|e| DeployError::Refused(format!("compiling the component panicked: {e}")))??
    } else {
        info.imports
    };
    check_grants(&imports, &binding.grants).map_err(DeployError::Refused)?;
    let mut binding = binding;
    binding.module = info.hash;
    registry.bind(binding.clone()).await?;
    Ok(binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ungranted_import_is_named() {
        let imports = vec![
            "runner:task/context@0.1.0".to_string(),
            "runner:task/kv@0.1.0".to_string(),
            "wasi:cli/stdout@0.2.3".to_string(),
        ];
        let err = check_grants(&imports, &TaskGrants::default()).unwrap_err();
        assert!(err.contains("runner:task/kv@0.1.0"), "{err}");
        let grants = TaskGrants {
            kv: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(check_grants(&imports, &grants), Ok(()));
    }
}
