//! `runner run` as a user runs it: the built binary, its exit codes, its
//! messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use crate::support::{self, guest};

fn runner(args: &[&str]) -> Output {
    let cache_home = tempfile::tempdir().unwrap();
    runner_with_cache_home(args, cache_home.path())
}

/// `runner ARGS` with `$XDG_CACHE_HOME` at `cache_home` (where the
/// compiled-module cache goes by default).
fn runner_with_cache_home(args: &[&str], cache_home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .env_remove("RUNNER_CACHE_DIR")
        .env_remove("RUST_LOG")
        .env("XDG_CACHE_HOME", cache_home)
        .output()
        .expect("running the runner binary")
}

fn run_file(path: &Path, extra: &[&str]) -> Output {
    let path = path.to_str().unwrap();
    let mut args = vec!["run", path];
    args.extend_from_slice(extra);
    runner(&args)
}

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32, stderr_contains: &str) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        err.contains(stderr_contains),
        "stderr does not contain {stderr_contains:?}:\n{err}"
    );
    assert!(
        !err.contains("panicked at 'main'") && !err.contains("thread 'main' panicked"),
        "{err}"
    );
}

#[test]
fn every_outcome_has_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(&dir, "ok.wasm", &support::ok_component());
    let output = run_file(&ok, &["--input", "{}"]);
    assert_exit(&output, 0, "");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"ok":true}"#
    );

    let fail = write(
        &dir,
        "fail.wasm",
        &support::task_error_component(false, "bad address"),
    );
    assert_exit(&run_file(&fail, &[]), 10, "the task failed: bad address");
    let retry = write(
        &dir,
        "retry.wasm",
        &support::task_error_component(true, "smtp busy"),
    );
    assert_exit(&run_file(&retry, &[]), 11, "retried: smtp busy");

    let spin = write(&dir, "spin.wasm", &support::spin_component());
    assert_exit(
        &run_file(&spin, &["--fuel", "1000000"]),
        12,
        "fuel exhausted",
    );
    assert_exit(
        &run_file(&spin, &["--timeout", "300ms"]),
        14,
        "time limit reached",
    );

    let grow = write(&dir, "grow.wasm", &support::memory_grow_component());
    assert_exit(
        &run_file(&grow, &["--memory", "8MiB"]),
        13,
        "memory limit reached (8.0 MiB)",
    );

    let trap = write(&dir, "trap.wasm", &support::unreachable_component());
    assert_exit(&run_file(&trap, &[]), 15, "the task trapped");

    let text = write(
        &dir,
        "text.wasm",
        &support::constant_output_component("plain text"),
    );
    let output = run_file(&text, &[]);
    assert_exit(&output, 16, "invalid output: the output is not JSON");
    assert!(output.stdout.is_empty());
}

#[test]
fn bad_input_is_named_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.wasm");
    assert_exit(&run_file(&missing, &[]), 2, "cannot read");

    let text = write(
        &dir,
        "notes.wasm",
        b"these are not the bytes you are looking for",
    );
    assert_exit(&run_file(&text, &[]), 2, "not a WebAssembly file");

    let core = write(&dir, "core.wasm", &support::core_module());
    assert_exit(
        &run_file(&core, &[]),
        2,
        "core WebAssembly module, not a component",
    );

    let other = write(&dir, "other.wasm", &support::other_world_component());
    assert_exit(&run_file(&other, &[]), 2, "missing the export `run");

    let import = write(&dir, "import.wasm", &support::unknown_import_component());
    assert_exit(
        &run_file(&import, &[]),
        2,
        "imports `example:net/raw-socket@1.0.0`",
    );

    let ok = write(&dir, "ok.wasm", &support::ok_component());
    assert_exit(
        &run_file(&ok, &["--input", "{\"name\": "]),
        2,
        "--input is not valid JSON: EOF while parsing a value at line 1 column 9",
    );
    assert_exit(&run_file(&ok, &["--memory", "lots"]), 2, "--memory");
    assert_exit(&run_file(&ok, &["--memory", "8GiB"]), 2, "above the 4 GiB");
    assert_exit(&run_file(&ok, &["--timeout", "soon"]), 2, "--timeout");
    // humantime takes it; the deadline `now + timeout` panicked.
    assert_exit(
        &run_file(&ok, &["--timeout", "300000000000y"]),
        2,
        "more than 100 years",
    );
}

#[test]
fn the_cache_dir_is_used_across_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let ok = write(&dir, "ok.wasm", &support::ok_component());
    let cache_arg = cache.to_str().unwrap();
    for _ in 0..2 {
        assert_exit(&run_file(&ok, &["--cache-dir", cache_arg]), 0, "");
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
}

/// Without `--cache-dir`, `runner run` keeps the compiled module in the
/// user's cache (only the user may write there) and the next invocation
/// reads it instead of compiling again; `--no-cache` keeps nothing.
#[test]
fn run_keeps_compiled_modules_in_the_user_cache_by_default() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let ok = write(&dir, "ok.wasm", &support::ok_component());
    let home = dir.path().join("xdg");
    let run = |extra: &[&str], home: &Path| {
        let mut args = vec!["run", ok.to_str().unwrap()];
        args.extend_from_slice(extra);
        runner_with_cache_home(&args, home)
    };
    assert_exit(&run(&[], &home), 0, "");
    let cache = home.join("runner/modules");
    let files: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let inode = std::fs::metadata(&files[0]).unwrap().ino();
    assert_exit(&run(&[], &home), 0, "");
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().ino(),
        inode,
        "the second run read the artifact instead of compiling and writing it again"
    );

    let other = dir.path().join("other");
    assert_exit(&run(&["--no-cache"], &other), 0, "");
    assert!(!other.exists(), "--no-cache wrote {}", other.display());
}

// ---- The examples ----

#[test]
fn hello_prints_its_greeting_as_json() {
    let output = run_file(&guest("hello"), &["--input", r#"{"name":"Ada"}"#]);
    assert_exit(&output, 0, "");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(value.to_string().contains("Ada"), "{value}");
    assert!(stderr(&output).contains("progress:"), "{}", stderr(&output));
}

#[test]
fn each_example_ends_with_its_exit_code() {
    assert_exit(
        &run_file(&guest("fuel_burner"), &["--fuel", "10000000"]),
        12,
        "fuel exhausted (budget 10000000)",
    );
    assert_exit(
        &run_file(&guest("memory_hog"), &["--memory", "32MiB"]),
        13,
        "memory limit reached",
    );
    assert_exit(
        &run_file(
            &guest("sleeper"),
            &["--input", r#"{"ms":60000}"#, "--timeout", "500ms"],
        ),
        14,
        "time limit reached",
    );
    assert_exit(
        &run_file(&guest("panicker"), &[]),
        15,
        "the task trapped: panicked at",
    );
    assert_exit(
        &run_file(&guest("flaky"), &[]),
        11,
        "the task asked to be retried",
    );
}

#[test]
fn ctrl_c_interrupts_a_running_task_with_exit_17() {
    let dir = tempfile::tempdir().unwrap();
    let spin = write(&dir, "spin.wasm", &support::spin_component());
    let child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", spin.to_str().unwrap(), "--timeout", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the binary to start and install its SIGINT handler.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_exit(&output, 17, "error: interrupted");
}

/// `runner call --repeat` refuses 0 (it enqueued one job) and an
/// idempotency key (every job would have been the first one, printed
/// again and again as new), before it sends anything.
#[test]
fn call_repeat_refuses_zero_and_an_idempotency_key() {
    let nowhere = ["--url", "http://127.0.0.1:9"];
    for (args, said) in [
        (&["call", "hello", "--repeat", "0"][..], "0 is not in 1.."),
        (
            &["call", "hello", "--repeat", "3", "--idempotency-key", "k"][..],
            "cannot be used with",
        ),
    ] {
        let mut all = args.to_vec();
        all.extend(nowhere);
        let out = runner(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(said) && stderr.contains("--repeat"),
            "{args:?}: {stderr}"
        );
    }
}

/// `runner workflow status --wait` asks again until its wait is over when
/// a long poll comes back before the workflow ends (the server holds one
/// at most 5 minutes): before, it made one request and exited 3 (still
/// running). Against a server that answers at once: running, running,
/// succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_status_waits_across_long_polls() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/v1/workflows/{id}",
        axum::routing::get(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let state = if n < 2 { "running" } else { "succeeded" };
            async move { axum::Json(serde_json::json!({ "state": state })) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["workflow", "status", "wf-1", "--wait", "30s", "--url", &url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
