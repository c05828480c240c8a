//! Capabilities from a guest: the example tasks run through `runner run`
//! with a `runner.toml`, once with their grant and once without it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use crate::support::guest;

/// `runner run <example> --config <config> [--task NAME] --input <input>`.
fn run(example: &str, config: &Path, task: Option<&str>, input: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.arg("run")
        .arg(guest(example))
        .arg("--config")
        .arg(config)
        .args(["--input", input])
        .env_remove("RUNNER_CACHE_DIR")
        .env_remove("RUST_LOG");
    if let Some(task) = task {
        cmd.args(["--task", task]);
    }
    cmd.output().expect("running the runner binary")
}

fn write_config(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("runner.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The output JSON of a successful run.
#[track_caller]
fn success(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
}

/// A failed run (exit 10) whose message shows `expected`.
#[track_caller]
fn failed_with(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(10), "stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "stderr does not contain {expected:?}:\n{stderr}"
    );
}

/// A TOML string literal for a path.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.to_str().unwrap().to_owned()).to_string()
}

#[test]
fn kv_guard_claims_its_key_with_the_grant_and_is_denied_without() {
    let dir = TempDir::new().unwrap();
    let config = write_config(
        &dir,
        "[host.kv]\n\n[tasks.guard.grants]\nkv = { max_keys = 10 }\n",
    );
    let input = r#"{"key": "remind:42", "ttl_ms": 60000}"#;

    let out = success(&run("kv_guard", &config, Some("guard"), input));
    assert_eq!(out["first"], true, "{out}");
    assert!(out["value"].is_string(), "the claiming job's id: {out}");

    failed_with(
        &run("kv_guard", &config, None, input),
        "denied: this task is not granted `kv`",
    );

    let bare = write_config(&dir, "");
    failed_with(
        &run("kv_guard", &bare, None, input),
        "unavailable: kv is not configured on this runner",
    );
}

#[test]
fn file_cleanup_deletes_exactly_the_old_matching_files() {
    let dir = TempDir::new().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(logs.join("sub")).unwrap();
    let ten_days_ago = SystemTime::now() - Duration::from_secs(10 * 24 * 3600);
    for (name, old) in [
        ("old.log", true),
        ("sub/old.log", true),
        ("new.log", false),
        ("old.txt", true),
    ] {
        let path = logs.join(name);
        std::fs::write(&path, b"0123456789").unwrap();
        if old {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(ten_days_ago)
                .unwrap();
        }
    }
    let config = write_config(
        &dir,
        &format!(
            "[host.files.roots]\nlogs = {}\n\n\
             [tasks.clean.grants]\nfiles = {{ logs = \"read-write\" }}\n\n\
             [tasks.look.grants]\nfiles = {{ logs = \"read-only\" }}\n",
            toml_path(&logs)
        ),
    );
    let input = r#"{"root": "logs", "glob": "**/*.log", "older_than_secs": 86400}"#;

    // Without the grant, and with a read-only one, nothing is deleted.
    failed_with(&run("file_cleanup", &config, None, input), "denied:");
    failed_with(
        &run("file_cleanup", &config, Some("look"), input),
        "denied:",
    );
    for name in ["old.log", "sub/old.log", "new.log", "old.txt"] {
        assert!(logs.join(name).exists(), "{name} deleted without a grant");
    }

    let out = success(&run("file_cleanup", &config, Some("clean"), input));
    let mut deleted: Vec<&str> = out["deleted"]
        .as_array()
        .unwrap_or_else(|| panic!("no deleted list: {out}"))
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    deleted.sort_unstable();
    assert_eq!(deleted, ["old.log", "sub/old.log"], "{out}");
    assert_eq!(out["bytes_freed"], 20, "{out}");
    assert!(!logs.join("old.log").exists());
    assert!(!logs.join("sub/old.log").exists());
    assert!(logs.join("new.log").exists());
    assert!(logs.join("old.txt").exists());
}

#[test]
fn pdf_report_saves_a_pdf_that_pdftotext_reads() {
    let dir = TempDir::new().unwrap();
    let reports = dir.path().join("reports");
    let config = write_config(
        &dir,
        &format!(
            "[host.pdf]\n\n[host.files.roots]\nreports = {}\n\n\
             [tasks.report.grants]\npdf = true\nfiles = {{ reports = \"read-write\" }}\n\n\
             [tasks.nopdf.grants]\nfiles = {{ reports = \"read-write\" }}\n",
            toml_path(&reports)
        ),
    );
    let input = r#"{"title": "Weekly figures", "summary": "All queues drained.",
        "rows": [["alpha", 3], ["bravo", 4]],
        "save_to": {"root": "reports", "path": "week.pdf"}}"#;

    failed_with(
        &run("pdf_report", &config, Some("nopdf"), input),
        "denied: this task is not granted `pdf`",
    );
    assert!(!reports.join("week.pdf").exists());

    let out = success(&run("pdf_report", &config, Some("report"), input));
    assert_eq!(out["saved"], true, "{out}");
    let pdf = reports.join("week.pdf");
    assert_eq!(
        std::fs::metadata(&pdf).unwrap().len(),
        out["bytes"].as_u64().unwrap()
    );
    let text = Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("running pdftotext (poppler-utils)");
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    for expected in [
        "Weekly figures",
        "All queues drained.",
        "alpha",
        "bravo",
        "Total",
        "7",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}
