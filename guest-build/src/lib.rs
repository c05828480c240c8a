//! Builds guest workspaces (task components) for `wasm32-wasip2` from a
//! build script, with a nested cargo and a target directory of their own:
//! the outer build holds the lock on `target/`, and the guests need another
//! target and profile. Used by the runtime's build script (the built-in
//! tasks it embeds) and by the test-programs crate (the guests the tests
//! run); both build into `<root>/target/wasm`, so shared dependencies
//! compile once.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// Where guests of the repository at `root` are built to, and where their
/// components land (`<name>.wasm`, hyphens as underscores).
pub fn guest_dir(root: &Path) -> PathBuf {
    target_dir(root).join(GUEST_TARGET).join("release")
}

fn target_dir(root: &Path) -> PathBuf {
    root.join("target").join("wasm")
}

/// Builds the workspace `workspace` (a directory of `root` with a
/// `Cargo.toml`), all of its members or only `packages`, and tells cargo to
/// run the calling build script again when it or the SDK changes. Returns
/// the directory the components are in.
pub fn build(root: &Path, workspace: &str, packages: &[&str]) -> Result<PathBuf, String> {
    for dir in ["sdk", workspace] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // Same toolchain as the outer build: `CARGO` is the cargo running us.
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    check_target_installed(&rustc)?;
    let manifest = root.join(workspace).join("Cargo.toml");
    if !has_members(&manifest)? {
        return Err(format!("{} lists no members", manifest.display()));
    }
    build_workspace(&cargo, &manifest, &target_dir(root), packages)?;
    let dir = guest_dir(root);
    for p in packages {
        let file = dir.join(format!("{}.wasm", p.replace('-', "_")));
        if !file.is_file() {
            return Err(format!(
                "building {p} in {} produced no {}",
                manifest.display(),
                file.display()
            ));
        }
    }
    Ok(dir)
}

/// The component `name` (`kv_guard`) built into `dir`, or an error naming
/// it: a guest that failed to build is an error, never a missing module.
pub fn component(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let path = dir.join(format!("{name}.wasm"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} was not built", path.display()))
    }
}

/// Fails with the fix when the standard library for the guest target is
/// missing: otherwise the nested cargo reports a much vaguer "can't find
/// crate for `core`".
fn check_target_installed(rustc: &OsString) -> Result<(), String> {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .env_remove("RUSTC_WRAPPER")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", rustc.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} --print sysroot` failed: {}",
            rustc.to_string_lossy(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let lib = Path::new(&sysroot)
        .join("lib")
        .join("rustlib")
        .join(GUEST_TARGET)
        .join("lib");
    if !lib.is_dir() {
        return Err(format!(
            "the Rust target {GUEST_TARGET} is not installed (no {}); the example \
             and built-in task components are built for it.\n       \
             Run: rustup target add {GUEST_TARGET}",
            lib.display()
        ));
    }
    Ok(())
}

/// Whether the workspace's `members` list names anything. Cargo refuses to
/// build a virtual manifest without members, and `tasks/` starts empty.
fn has_members(manifest: &Path) -> Result<bool, String> {
    let text = fs::read_to_string(manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let Some(start) = text
        .lines()
        .scan(0usize, |offset, line| {
            let here = *offset;
            *offset += line.len() + 1;
            Some((here, line))
        })
        .find(|(_, line)| line.trim_start().starts_with("members"))
        .map(|(offset, _)| offset)
    else {
        return Ok(false);
    };
    let rest = &text[start..];
    let list = match (rest.find('['), rest.find(']')) {
        (Some(open), Some(close)) if open < close => &rest[open + 1..close],
        _ => return Err(format!("cannot read `members` in {}", manifest.display())),
    };
    Ok(list
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .any(|line| line.contains('"')))
}

fn build_workspace(
    cargo: &OsString,
    manifest: &Path,
    target_dir: &Path,
    packages: &[&str],
) -> Result<(), String> {
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    for p in packages {
        cmd.arg("--package").arg(p);
    }
    clean_env(&mut cmd);
    // Our stdout is parsed by cargo for directives: keep the nested build's
    // chatter on stderr.
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if !status.success() {
        return Err(format!(
            "building the guest components in {} failed ({status}); see the output above",
            manifest.display()
        ));
    }
    Ok(())
}

/// Removes what the outer cargo set for this build script and what would
/// leak the outer build's settings (flags for the host target, a wrapper,
/// the outer target dir) into the nested one. The jobserver (`CARGO_MAKEFLAGS`)
/// stays so that the nested build shares the outer build's job slots, and so do
/// the settings for reaching the registry.
fn clean_env(cmd: &mut Command) {
    const KEEP: &[&str] = &["CARGO_MAKEFLAGS", "CARGO_HOME"];
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const REMOVE: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "NUM_JOBS",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer_cargo = key.starts_with("CARGO")
            && !KEEP.contains(&key)
            && !KEEP_PREFIXES.iter().any(|p| key.starts_with(p));
        if outer_cargo || REMOVE.contains(&key) || key.starts_with("DEP_") {
            cmd.env_remove(key);
        }
    }
}
