//! Builds the guest workspaces (`examples/`, `tasks/`) for `wasm32-wasip2`
//! into `<root>/target/wasm` and tells the crate where the components are
//! (`RUNNER_GUEST_DIR`), so that tests and `runner dev` load components built
//! from source, never a committed `.wasm`.
//!
//! The guests are a separate cargo invocation with its own target directory:
//! the outer build holds the lock on `target/`, and the guests need a
//! different target and profile.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GUEST_TARGET: &str = "wasm32-wasip2";
const GUEST_WORKSPACES: &[&str] = &["examples", "tasks"];

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
    let target_dir = root.join("target").join("wasm");
    let guest_dir = target_dir.join(GUEST_TARGET).join("release");

    for dir in ["sdk", "examples", "tasks"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rustc-env=RUNNER_GUEST_DIR={}", guest_dir.display());

    // Same toolchain as the outer build: `CARGO` is the cargo running us.
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    check_target_installed(&rustc)?;

    for name in GUEST_WORKSPACES {
        let manifest = root.join(name).join("Cargo.toml");
        if !manifest.exists() || !has_members(&manifest)? {
            continue;
        }
        build_workspace(&cargo, &manifest, &target_dir)?;
    }
    write_builtin_table(&guest_dir)
}

/// Components embedded in the `runner` binary (see `src/builtin.rs`): the
/// built-in tasks and the examples `runner dev` binds. A component that was
/// not built (its crate does not exist yet) is left out.
const EMBEDDED: &[(&str, &str, &str)] = &[
    // (task name, file stem, kind)
    ("reminder", "reminder", "task"),
    ("report", "report", "task"),
    ("cleanup", "cleanup", "task"),
    ("notify", "notify", "task"),
    ("hello", "hello", "example"),
    ("flaky", "flaky", "example"),
    ("sleeper", "sleeper", "example"),
    ("fan-out", "fan_out", "example"),
    ("kv-guard", "kv_guard", "example"),
    ("pdf-report", "pdf_report", "example"),
    ("mailer", "mailer", "example"),
    ("webhook", "webhook", "example"),
    ("file-cleanup", "file_cleanup", "example"),
];

fn write_builtin_table(guest_dir: &Path) -> Result<(), String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let mut table = String::from("&[\n");
    for (name, stem, kind) in EMBEDDED {
        let path = guest_dir.join(format!("{stem}.wasm"));
        if path.exists() {
            table.push_str(&format!(
                "    ({name:?}, {kind:?}, include_bytes!({:?})),\n",
                path.display().to_string()
            ));
        }
    }
    table.push_str("]\n");
    fs::write(out_dir.join("builtin.rs"), table)
        .map_err(|e| format!("cannot write {}: {e}", out_dir.display()))
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

fn build_workspace(cargo: &OsString, manifest: &Path, target_dir: &Path) -> Result<(), String> {
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
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
