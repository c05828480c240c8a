//! Builds the components embedded in the `runner` binary (`builtin:NAME`,
//! see `src/builtin.rs`): the built-in tasks of `tasks/` and the `hello`
//! example the README tour calls; and `my-first-task`, which the tour
//! uploads from `target/wasm/` (not embedded). They are built from source on every
//! build (never a committed `.wasm`), for `wasm32-wasip2`, with a nested
//! cargo (`runner-guest-build`). A component that fails to build fails the
//! build. The guests the tests run are built by the test-programs crate.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// `(name, file stem, kind)` of every embedded component.
const EMBEDDED: &[(&str, &str, &str)] = &[
    ("reminder", "reminder", "task"),
    ("report", "report", "task"),
    ("cleanup", "cleanup", "task"),
    ("notify", "notify", "task"),
    ("hello", "hello", "example"),
];

fn main() {
    if let Err(message) = run() {
        // A build script's panic message is what cargo shows; keep it readable.
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?);
    let root = manifest_dir
        .parent()
        .ok_or("runtime/ has no parent directory")?
        .to_path_buf();
    runner_guest_build::build(&root, "tasks", &[])?;
    let dir = runner_guest_build::build(&root, "examples", &["hello", "my-first-task"])?;
    write_builtin_table(&dir)
}

fn write_builtin_table(guest_dir: &Path) -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let mut table = String::from("&[\n");
    for (name, stem, kind) in EMBEDDED {
        let path = runner_guest_build::component(guest_dir, stem)?;
        table.push_str(&format!(
            "    ({name:?}, {kind:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    table.push_str("]\n");
    fs::write(out_dir.join("builtin.rs"), table)
        .map_err(|e| format!("cannot write {}: {e}", out_dir.display()))
}
