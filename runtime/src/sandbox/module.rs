//! What a component is before it runs: its hash, whether it is a task at all
//! (`LoadError`), what it imports, and its compiled form (`LoadedModule`).

use std::fmt;

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::{ComponentItem, Type};

use super::bindings::TaskPre;
use super::run::RunState;
pub use crate::names::{ModuleHash, ParseHashError};
use crate::registry::Capability;

/// Why bytes could not be loaded as a task. Each variant names what is wrong
/// so that an upload (422) or `runner run` can tell the author what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly file (it does not start with the `\\0asm` magic bytes)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component; build the task with \
         `cargo build --target wasm32-wasip2` (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("the component does not implement the `runner:task/task` world: {missing}")]
    WrongWorld { missing: String },
    #[error(
        "the component imports `{name}`, which this runner does not provide \
         (a task may import only `runner:task/*@0.1.0` interfaces and WASI 0.2)"
    )]
    UnknownImport { name: String },
    #[error("invalid component: {0}")]
    Invalid(String),
}

/// How a `LoadedModule` came to be compiled code in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleOrigin {
    /// Compiled from the component bytes by this process.
    Compiled,
    /// Read back from the on-disk cache of compiled artifacts.
    DiskCache,
}

/// A validated, compiled task component, ready to instantiate in
/// microseconds: it holds the linked `InstancePre`.
pub struct LoadedModule {
    pub hash: ModuleHash,
    /// Every interface the component imports, as in the component
    /// (e.g. `runner:task/kv@0.1.0`, `wasi:cli/stdout@0.2.3`), sorted.
    pub imports: Vec<String>,
    pub origin: ModuleOrigin,
    pub(crate) pre: TaskPre<RunState>,
}

impl LoadedModule {
    /// The `runner:task` capabilities the component needs: what its task
    /// name must be granted. Those always available (`context`, `types`)
    /// are not listed.
    pub fn capabilities(&self) -> Vec<Capability> {
        self.imports
            .iter()
            .filter_map(|name| Capability::from_import(name))
            .filter(|c| !c.always_available())
            .collect()
    }
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModule")
            .field("hash", &self.hash)
            .field("imports", &self.imports)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// WASI 0.2 interfaces the runner links. Filesystem and sockets are linked
/// because Rust's standard library imports them, but a run has no preopened
/// directory and every socket address is denied.
const WASI_INTERFACES: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
];

fn is_wasi_p2(import: &str) -> bool {
    let Some((iface, version)) = import.split_once('@') else {
        return false;
    };
    // The linker matches any 0.2.x import semver-compatibly.
    version.starts_with("0.2.") && WASI_INTERFACES.contains(&iface)
}

/// The cheap checks on raw bytes, before anything is compiled.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(LoadError::CoreModule);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(LoadError::Invalid(format!(
            "unsupported WebAssembly version/layer {:02x?}",
            &bytes[4..8]
        )));
    }
    Ok(())
}

/// Checks the component against the `task` world and returns its imports.
///
/// `Linker::instantiate_pre` and `TaskPre::new` have the final word; this
/// runs first so that the common mistakes get a message naming the export or
/// import at fault instead of a type-checker's.
pub(crate) fn check_world(
    engine: &Engine,
    component: &Component,
) -> Result<Vec<String>, LoadError> {
    let ty = component.component_type();

    let mut imports = Vec::new();
    for (name, _) in ty.imports(engine) {
        if Capability::from_import(name).is_none() && !is_wasi_p2(name) {
            return Err(LoadError::UnknownImport {
                name: name.to_string(),
            });
        }
        imports.push(name.to_string());
    }
    imports.sort();

    const EXPECTED: &str = "`run: func(input: string) -> result<string, task-error>`";
    let Some(run) = ty.get_export(engine, "run") else {
        let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
        let found = if exports.is_empty() {
            "it exports nothing".to_string()
        } else {
            format!("it exports {}", quote_list(&exports))
        };
        return Err(LoadError::WrongWorld {
            missing: format!("missing the export {EXPECTED} ({found})"),
        });
    };
    let ComponentItem::ComponentFunc(func) = run.ty else {
        return Err(LoadError::WrongWorld {
            missing: format!("its export `run` is not a function; expected {EXPECTED}"),
        });
    };
    let params: Vec<(&str, Type)> = func.params().collect();
    let results: Vec<Type> = func.results().collect();
    let params_ok = matches!(params.as_slice(), [(_, Type::String)]);
    let result_ok = match results.as_slice() {
        [Type::Result(result)] => {
            matches!(result.ok(), Some(Type::String)) && is_task_error(result.err())
        }
        _ => false,
    };
    if !params_ok || !result_ok {
        return Err(LoadError::WrongWorld {
            missing: format!("its export `run` has the wrong type; expected {EXPECTED}"),
        });
    }
    Ok(imports)
}

fn is_task_error(ty: Option<Type>) -> bool {
    let Some(Type::Variant(variant)) = ty else {
        return false;
    };
    let cases: Vec<(String, bool)> = variant
        .cases()
        .map(|case| (case.name.to_string(), matches!(case.ty, Some(Type::String))))
        .collect();
    cases == [("retry".to_string(), true), ("fail".to_string(), true)]
}

fn quote_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_names_are_classified() {
        assert_eq!(
            Capability::from_import("runner:task/kv@0.1.0"),
            Some(Capability::Kv)
        );
        assert_eq!(Capability::from_import("runner:task/kv@0.2.0"), None);
        assert_eq!(Capability::from_import("runner:task/shell@0.1.0"), None);
        assert!(is_wasi_p2("wasi:cli/stdout@0.2.3"));
        assert!(!is_wasi_p2("wasi:http/outgoing-handler@0.2.3"));
        assert!(!is_wasi_p2("wasi:cli/stdout@0.3.0"));
    }
}
