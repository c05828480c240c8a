//! The guest components the tests run, by name: the examples of
//! `examples/` (`hello`, `kv_guard`, `mailer`, ...) and the test-only
//! programs of `test-programs/guests/` (`flaky`, `sleeper`, `fan_out`,
//! `fuel_burner`, `memory_hog`, `panicker`, `finisher`). Built from source by this
//! crate's build script, as wasmtime's test-programs are; a test never
//! depends on a `.wasm` someone built by hand.

use std::path::{Path, PathBuf};

/// The directory the components are in.
pub fn dir() -> &'static Path {
    Path::new(env!("RUNNER_TEST_PROGRAMS_DIR"))
}

/// The component `name` (hyphens as underscores: `kv_guard`).
///
/// # Panics
///
/// When it was not built: a typo in a test, or a crate missing from its
/// workspace's members.
pub fn path(name: &str) -> PathBuf {
    let path = dir().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: no guest named {name} in examples/ or test-programs/guests/",
        path.display()
    );
    path
}

/// The bytes of the component `name`.
pub fn bytes(name: &str) -> Vec<u8> {
    let path = path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
