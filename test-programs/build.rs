//! Builds every example (`examples/`) and every test-only guest
//! (`test-programs/guests/`) for wasm32-wasip2, and tells the crate where
//! the components are (`RUNNER_TEST_PROGRAMS_DIR`). Only test builds depend
//! on this crate, so the `runner` binary never waits for these.

use std::path::PathBuf;

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?,
    );
    let root = manifest_dir
        .parent()
        .ok_or("test-programs/ has no parent directory")?;
    runner_guest_build::build(root, "examples", &[])?;
    let dir = runner_guest_build::build(root, "test-programs/guests", &[])?;
    println!("cargo:rustc-env=RUNNER_TEST_PROGRAMS_DIR={}", dir.display());
    Ok(())
}
