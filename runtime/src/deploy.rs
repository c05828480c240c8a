//! The checked way into the registry, shared by the HTTP API, `runner.toml`
//! and `runner dev`: an upload is validated and compiled by the sandbox
//! before it is stored; a binding is refused when its module imports a
//! capability its grants do not give (see [`crate::registry::grants`]).
//!
//! It sits above the registry and the sandbox so that neither imports the
//! other.

use std::sync::Arc;

use crate::registry::grants::check_grants;
use crate::registry::{ModuleHash, ModuleInfo, Registry, RegistryError, TaskBinding, TaskName};
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
    UnknownModule(ModuleHash),
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
    let (imports, bytes) = load(sandbox, bytes).await?;
    Ok(registry.store_module(&bytes, imports).await?)
}

/// Binds `binding` to the component `bytes` (its `module` is set to their
/// hash), storing them only once the binding is accepted: a refused one
/// stores nothing.
pub async fn upload_and_bind(
    sandbox: &Sandbox,
    registry: &Arc<dyn Registry>,
    bytes: Vec<u8>,
    mut binding: TaskBinding,
) -> Result<TaskBinding, DeployError> {
    let (imports, bytes) = load(sandbox, bytes).await?;
    binding.module = ModuleHash::of(&bytes);
    check(&binding)?;
    covers(&imports, &binding)?;
    binding.module = registry.store_module(&bytes, imports).await?.0.hash;
    registry.bind(binding.clone()).await?;
    Ok(binding)
}

/// Compiles `bytes` as a task component: its imports, and the bytes.
async fn load(sandbox: &Sandbox, bytes: Vec<u8>) -> Result<(Vec<String>, Vec<u8>), DeployError> {
    let sb = sandbox.clone();
    tokio::task::spawn_blocking(move || sb.load(&bytes).map(|m| (m.imports.clone(), bytes)))
        .await
        .map_err(|e| DeployError::Refused(format!("compiling the component panicked: {e}")))?
        .map_err(DeployError::from)
}

/// The binding's grants cover what its module imports.
fn covers(imports: &[String], binding: &TaskBinding) -> Result<(), DeployError> {
    check_grants(imports, &binding.grants).map_err(|e| DeployError::Refused(e.to_string()))
}

/// A binding's name and grants, checked before its module is looked at.
fn check(binding: &TaskBinding) -> Result<(), DeployError> {
    TaskName::validate(&binding.name).map_err(|e| DeployError::Refused(e.to_string()))?;
    binding
        .grants
        .check()
        .map_err(|e| DeployError::Refused(e.to_string()))
}

/// Binds (or re-binds) a task name after checking the name, the module and
/// the grants against the module's imports.
pub async fn bind(
    sandbox: &Sandbox,
    registry: &Arc<dyn Registry>,
    binding: TaskBinding,
) -> Result<TaskBinding, DeployError> {
    check(&binding)?;
    let info = registry
        .module_info(&binding.module)
        .await?
        .ok_or_else(|| DeployError::UnknownModule(binding.module))?;
    let imports = if info.imports.is_empty() {
        // Stored without validation (e.g. by a library caller): find out now.
        let bytes = registry
            .module(&info.hash)
            .await?
            .ok_or_else(|| DeployError::UnknownModule(binding.module))?;
        load(sandbox, bytes).await?.0
    } else {
        info.imports
    };
    covers(&imports, &binding)?;
    let mut binding = binding;
    binding.module = info.hash;
    registry.bind(binding.clone()).await?;
    Ok(binding)
}
