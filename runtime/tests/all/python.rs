//! Tasks in Python: the SDK of `sdk-python/` and its examples, built into
//! components by the real componentize-py (installed in `.python/` by
//! `scripts/setup`), run by a real worker on both brokers with real
//! services (an SMTP server, kv), and refused at bind when they import a
//! capability they are not granted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use reqwest::StatusCode;
use runner::producer::EnqueueRequest;
use runner::queue::{Job, JobId, JobState};
use runner::registry::{KvGrant, TaskBinding};
use runner::sandbox::host::HostServices;
use runner_host_fns::kv::KvService;
use runner_host_fns::mail::{MailConfig, MailGrant, Mailer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::{TestApi, message, module_hash};
use crate::builtin_tasks::Inbox;
use crate::worker::{Env, both_brokers, cfg, test_sandbox, wait_final};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A program of the `.python` virtualenv `scripts/setup` makes.
fn python_tool(name: &str) -> PathBuf {
    let path = workspace().join(".python/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (it installs componentize-py, mypy and the SDK in .python/)",
        path.display()
    );
    path
}

/// Where built Python components and their compiled forms are kept between
/// test processes (each nextest test is a process of its own).
fn cache() -> PathBuf {
    let dir = workspace().join("target/python-tasks");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hash_files(h: &mut Sha256, dir: &Path) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "__pycache__" {
                hash_files(h, &path);
            }
        } else if name.ends_with(".py") || name.ends_with(".txt") || name.ends_with(".wit") {
            h.update(name.as_bytes());
            h.update(std::fs::read(&path).unwrap());
        }
    }
}

/// The component built from `<dir>/app.py` (with `<dir>/requirements.txt`
/// if there is one) by `runner-task build`, built once per content of the
/// app and the SDK.
pub(crate) fn python_task(dir: &str) -> Vec<u8> {
    let app_dir = workspace().join(dir);
    let mut h = Sha256::new();
    hash_files(&mut h, &workspace().join("sdk-python/runner_task"));
    hash_files(&mut h, &app_dir);
    let key = hex::encode(&h.finalize()[..8]);
    let out = cache().join(format!("{}-{key}.wasm", dir.replace('/', "_")));
    if let Ok(bytes) = std::fs::read(&out) {
        return bytes;
    }
    // One build at a time: the tests that need the same task wait for the
    // first one's instead of building it again.
    let lock = std::fs::File::create(cache().join(".lock")).unwrap();
    lock.lock().unwrap();
    if let Ok(bytes) = std::fs::read(&out) {
        return bytes;
    }
    let tmp = out.with_extension("building");
    let mut cmd = Command::new(python_tool("runner-task"));
    cmd.arg("build")
        .arg(app_dir.join("app.py"))
        .arg("-o")
        .arg(&tmp);
    let requirements = app_dir.join("requirements.txt");
    if requirements.is_file() {
        // From the wheels scripts/setup fetched: the tests need no index.
        cmd.arg("-r").arg(requirements);
        cmd.env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", workspace().join(".python/wheels"));
    }
    let done = cmd.output().expect("running runner-task build");
    assert!(
        done.status.success(),
        "runner-task build {dir} failed:\n{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    // Builds of older contents are of no further use.
    let prefix = format!("{}-", dir.replace('/', "_"));
    for entry in std::fs::read_dir(cache()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with(&prefix) && name.ends_with(".wasm") && path != out {
            let _ = std::fs::remove_file(&path);
        }
    }
    std::fs::read(&out).unwrap()
}

const BEHAVE: &str = "runtime/tests/python/behave";
const HELLO: &str = "examples/python/hello";
const REMINDER: &str = "examples/python/reminder";

fn services(smtp_port: u16) -> HostServices {
    let mail: MailConfig = serde_json::from_value(json!({
        "host": "127.0.0.1",
        "port": smtp_port,
        "tls": "none",
        "from": { "email": "noreply@example.com", "name": "業務システム" },
    }))
    .unwrap();
    HostServices {
        kv: Some(Arc::new(KvService::in_memory())),
        mail: Some(Arc::new(Mailer::from_config(&mail).unwrap())),
        ..HostServices::default()
    }
}

/// A sandbox for a test's worker (compiled modules kept in the cache),
/// with `components` compiled before it is returned: compiling a Python
/// component takes seconds, longer on a loaded machine, and a job's wait
/// must not include it.
async fn sandbox_with(components: &[&[u8]]) -> runner::sandbox::Sandbox {
    let sandbox = test_sandbox(Some(cache().join("compiled")));
    for bytes in components {
        let (sb, bytes) = (sandbox.clone(), bytes.to_vec());
        tokio::task::spawn_blocking(move || sb.load(&bytes).map(|_| ()))
            .await
            .unwrap()
            .expect("the component loads");
    }
    sandbox
}

fn kv_and_mail(b: &mut TaskBinding) {
    b.grants.kv = Some(KvGrant::default());
    b.grants.mail = Some(MailGrant::default());
}

async fn enqueue(env: &Env, task: &str, input: Value) -> JobId {
    env.producer
        .enqueue(EnqueueRequest::task(task, input.to_string()))
        .await
        .unwrap()
        .job
        .id
}

async fn run(env: &Env, task: &str, input: Value) -> Job {
    let id = enqueue(env, task, input).await;
    wait_final(&env.broker, id).await
}

#[track_caller]
fn succeeded(j: &Job) -> Value {
    assert_eq!(j.state, JobState::Success, "{j:?}");
    j.result_value().unwrap()
}

#[track_caller]
fn failed(j: &Job, kind: &str, expected: &str) {
    assert_eq!(j.state, JobState::Failure, "{j:?}");
    let e = j.error.as_ref().expect("a failure has an error");
    assert_eq!(e.kind, kind, "{j:?}");
    assert!(
        e.message.contains(expected),
        "{:?} does not contain {expected:?}",
        e.message
    );
}

/// Every behaviour the issue lists, through one worker.
async fn python_tasks_run(env: Env) {
    let (inbox, smtp_port) = Inbox::start();
    let (hello, behave, reminder) = (
        python_task(HELLO),
        python_task(BEHAVE),
        python_task(REMINDER),
    );
    env.bind_bytes("hello-py", &hello, "py", |_| {}).await;
    env.bind_bytes("behave", &behave, "py", kv_and_mail).await;
    env.bind_bytes("behave-limited", &behave, "py", |b| {
        kv_and_mail(b);
        b.limits.fuel = Some(300_000_000);
        b.limits.memory_bytes = Some(96 << 20);
        b.retry.max_retries = 0;
    })
    .await;
    env.bind_bytes("reminder-py", &reminder, "py", kv_and_mail)
        .await;
    let sandbox = sandbox_with(&[&hello, &behave, &reminder]).await;
    let w = env
        .worker_in(sandbox, services(smtp_port), cfg(&["py"], 4))
        .await;

    // A dataclass in, a dataclass out.
    let j = run(&env, "hello-py", json!({"name": "Ada"})).await;
    assert_eq!(
        succeeded(&j),
        json!({"greeting": "Hello, Ada!", "attempt": 1})
    );
    assert!(
        j.log
            .iter()
            .any(|l| l.level == "INFO" && l.message == "greeting Ada"),
        "{:?}",
        j.log
    );
    let lines = json!([
        {"item": "りんご", "quantity": 3, "price": 120},
        {"item": "みかん", "quantity": 2, "price": 60.5},
    ]);
    let j = run(&env, "behave", json!({"do": "total", "lines": lines})).await;
    assert_eq!(
        succeeded(&j),
        json!({"items": 5, "total": 481.0, "attempt": 1})
    );
    // Input that does not fit the dataclass: a fail naming where.
    let bad = json!([{"item": "x", "quantity": "two", "price": 1}]);
    let j = run(&env, "behave", json!({"do": "total", "lines": bad})).await;
    failed(
        &j,
        "fail",
        "input.lines[0].quantity: expected an integer, got a string",
    );
    let j = run(&env, "behave", json!({"do": "total", "colour": 1})).await;
    failed(&j, "fail", "input: unknown field 'colour'");

    // `Retry` then success.
    let j = run(&env, "behave", json!({"do": "retry_once"})).await;
    assert_eq!(succeeded(&j), json!({"attempt": 2}));
    assert_eq!(j.attempt, 2);

    // `Fail`: no retry.
    let j = run(&env, "behave", json!({"do": "fail"})).await;
    failed(&j, "fail", "the order is closed");
    assert_eq!(j.attempt, 1, "a Fail is not retried");

    // An uncaught exception: a fail, with its traceback in the job's log.
    let j = run(&env, "behave", json!({"do": "raise"})).await;
    failed(&j, "fail", "ZeroDivisionError: division by zero");
    assert_eq!(j.attempt, 1);
    let trace = j
        .log
        .iter()
        .find(|l| l.level == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line in {:?}", j.log));
    assert!(
        trace
            .message
            .starts_with("Traceback (most recent call last):")
            && trace.message.contains("app.py")
            && trace.message.contains("ZeroDivisionError"),
        "{}",
        trace.message
    );

    // The kv guard: the second claim of the same key loses.
    let key = format!("k-{}", JobId::new());
    let first = run(&env, "behave", json!({"do": "guard", "key": key})).await;
    let second = run(&env, "behave", json!({"do": "guard", "key": key})).await;
    assert_eq!(succeeded(&first), json!({"first": true}));
    assert_eq!(succeeded(&second), json!({"first": false}));

    // Mail to the SMTP server, the Japanese subject encoded (RFC 2047).
    let j = run(
        &env,
        "behave",
        json!({"do": "mail", "to": "taro@example.com"}),
    )
    .await;
    let out = succeeded(&j);
    assert!(
        out["message_id"].as_str().is_some_and(|m| m.contains('@')),
        "{out}"
    );
    let sent = inbox.parsed();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.rcpt_to, ["taro@example.com"]);
    let raw = String::from_utf8_lossy(&sent[0].0.data);
    let subject_line = raw
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or_else(|| panic!("no Subject in {raw}"));
    assert!(subject_line.contains("=?utf-8?"), "{subject_line}");
    assert_eq!(sent[0].1.subject(), Some("本日の進捗リマインダー"));
    assert_eq!(
        sent[0]
            .1
            .to()
            .and_then(|t| t.first())
            .and_then(|a| a.name()),
        Some("山田 太郎")
    );

    // A capability the task did not declare: its component cannot call it.
    let j = run(&env, "behave", json!({"do": "undeclared"})).await;
    failed(&j, "fail", "the task uses `http` but does not declare it");

    // `while True: pass` is stopped by fuel, a hog at its memory limit.
    let j = run(&env, "behave-limited", json!({"do": "burn"})).await;
    failed(&j, "fuel_exhausted", "");
    let j = run(&env, "behave-limited", json!({"do": "hog"})).await;
    failed(&j, "memory_limit", "");
    assert!(
        j.memory_peak_bytes.is_some_and(|m| m <= 96 << 20),
        "{:?}",
        j.memory_peak_bytes
    );

    // The reminder port: mailed once per user and local day.
    let input = json!({
        "timezone": "Asia/Tokyo",
        "now": "2026-11-24T00:00:00Z",
        "link": "https://intranet.example.com/progress",
        "users": [
            {"id": 42, "email": "taro@example.com", "name": "山田 太郎",
             "quiet_hours": "22:00-07:00",
             "items": [{"title": "見積書の作成", "due": "2026-11-25"}, "議事録の共有"]},
            {"id": 43, "email": "jane@example.com", "timezone": "America/New_York",
             "frequency": "weekly:fri", "items": ["Q4 plan"]},
        ],
    });
    let first = succeeded(&run(&env, "reminder-py", input.clone()).await);
    assert_eq!(first["sent"], 1, "{first}");
    assert_eq!(first["users"][0]["local_date"], "2026-11-24", "{first}");
    assert_eq!(first["users"][1]["reason"], "not_today", "{first}");
    assert_eq!(
        first["users"][1]["detail"],
        "weekly on Friday; it is Monday there"
    );
    let again = succeeded(&run(&env, "reminder-py", input).await);
    assert_eq!(again["sent"], 0, "{again}");
    assert_eq!(again["users"][0]["reason"], "already_sent", "{again}");
    let sent = inbox.parsed();
    assert_eq!(sent.len(), 2, "the reminder mailed once");
    assert_eq!(
        sent[1].1.subject(),
        Some("本日の進捗リマインダー（2026年11月24日）")
    );
    let body = sent[1].1.body_text(0).unwrap();
    assert!(
        body.contains("山田 太郎 さん") && body.contains("・見積書の作成（期限: 2026-11-25）"),
        "{body}"
    );

    w.stop().await;
}

/// A component imports just what its task declares, and binding it without
/// a grant for one of those is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_task_importing_an_ungranted_capability_is_refused_at_bind() {
    let sandbox = test_sandbox(Some(cache().join("compiled")));
    let api = TestApi::start_in(sandbox, None, "64MiB", false, false).await;
    let behave = python_task(BEHAVE);
    let (s, v) = api.upload(&behave).await;
    assert!(s.is_success(), "{v}");
    let imports: Vec<&str> = v["imports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.as_str())
        .filter(|i| i.starts_with("runner:task/"))
        .collect();
    assert_eq!(
        imports,
        [
            "runner:task/context@0.1.0",
            "runner:task/kv@0.1.0",
            "runner:task/mail@0.1.0",
            "runner:task/types@0.1.0"
        ],
        "{v}"
    );
    let (s, v) = api
        .bind("behave", json!({ "module": module_hash(&behave) }))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(message(&v).contains("`runner:task/kv@0.1.0`"), "{v}");
    let (s, v) = api
        .bind(
            "behave",
            json!({ "module": module_hash(&behave), "grants": { "kv": {} } }),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(message(&v).contains("`mail`"), "{v}");
    let (s, v) = api
        .bind(
            "behave",
            json!({ "module": module_hash(&behave), "grants": { "kv": {}, "mail": {} } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // hello declares nothing: no grant needed.
    let hello = python_task(HELLO);
    let (s, v) = api.upload(&hello).await;
    assert!(s.is_success(), "{v}");
    let (s, v) = api
        .bind("hello-py", json!({ "module": module_hash(&hello) }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    api.stop().await;
}

/// `mypy --strict` passes on the SDK and the Python tasks, against the
/// bindings `runner-task bindings` generates, and the SDK's own unit tests
/// (conversion of inputs, the builder's reading of `needs`) pass.
#[test]
fn the_python_sdk_type_checks_and_its_unit_tests_pass() {
    let dir = tempfile::TempDir::new().unwrap();
    let bindings = dir.path().join("bindings");
    let out = Command::new(python_tool("runner-task"))
        .arg("bindings")
        .arg(&bindings)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let root = workspace();
    let mypy_path = format!(
        "{}:{}",
        bindings.display(),
        root.join("sdk-python").display()
    );
    let mut targets = vec![vec!["sdk-python/runner_task".to_string()]];
    for app in [HELLO, REMINDER, BEHAVE, EVERYTHING] {
        targets.push(vec![format!("{app}/app.py")]);
    }
    for target in targets {
        let out = Command::new(python_tool("mypy"))
            .args(["--strict", "--no-incremental"])
            .args(&target)
            .env("MYPYPATH", &mypy_path)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mypy --strict {target:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(python_tool("python"))
        .args(["-m", "unittest", "discover", "-s", "sdk-python/tests", "-v"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the SDK's unit tests:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The copy of the WIT in the Python package is the contract's.
#[test]
fn the_python_sdk_ships_the_same_wit() {
    let root = workspace();
    let sdk = std::fs::read_to_string(root.join("sdk/wit/task.wit")).unwrap();
    let py = std::fs::read_to_string(root.join("sdk-python/runner_task/wit/task.wit")).unwrap();
    assert!(
        sdk == py,
        "sdk-python/runner_task/wit/task.wit differs from sdk/wit/task.wit: copy it over"
    );
}

/// `runner bench sandbox --module` measures a Python component too.
#[test]
fn bench_sandbox_measures_a_python_task() {
    let dir = tempfile::TempDir::new().unwrap();
    let module = dir.path().join("hello.wasm");
    std::fs::write(&module, python_task(HELLO)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["bench", "sandbox", "--module"])
        .arg(&module)
        .args(["--input", r#"{"name":"bench"}"#])
        .args(["--runs", "20", "--throughput-runs", "20", "--cpu-runs", "0"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = crate::support::ok_stdout(&out);
    for figure in [
        "compile",
        "instantiate+run over 20 runs: median",
        "throughput",
    ] {
        assert!(stdout.contains(figure), "no {figure:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains("budget"),
        "the Rust hello's budget is not this module's:\n{stdout}"
    );
}

/// The page faults this process has taken (`minflt` of `/proc/self/stat`).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses: state is the
    // 3rd field of the line, minflt the 10th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(7).unwrap().parse().unwrap()
}

/// A Python run leaves its memory slot ready for the next run: wasmtime
/// finds the pages it dirtied (`PAGEMAP_SCAN`) and resets them in place,
/// so the next run of the component takes no page faults. CPython dirties
/// hundreds of scattered pages; wasmtime 48's scan stopped after 32 dirty
/// regions and decommitted the rest, and every run of `hello` faulted about
/// 290 pages back in (some 40 % of its time).
#[tokio::test(flavor = "current_thread")]
async fn a_python_run_leaves_its_memory_resident_for_the_next() {
    if !wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
        eprintln!("skipped: this kernel has no PAGEMAP_SCAN (Linux 6.7+)");
        return;
    }
    let bytes = python_task(HELLO);
    let sandbox = sandbox_with(&[&bytes]).await;
    let module = sandbox.load(&bytes).unwrap();
    let run = || async {
        let report = sandbox
            .run(
                &module,
                runner::sandbox::RunRequest::new(r#"{"name":"Ada"}"#),
            )
            .await;
        assert_eq!(report.outcome.kind(), "success", "{:?}", report.outcome);
    };
    // The first runs fault the slot's pages in once.
    for _ in 0..5 {
        run().await;
    }
    const RUNS: u64 = 50;
    let before = minor_faults();
    for _ in 0..RUNS {
        run().await;
    }
    let faults = minor_faults() - before;
    assert!(
        faults < RUNS * 20,
        "{faults} page faults in {RUNS} runs of the Python hello: its memory is not kept resident"
    );
}

const EVERYTHING: &str = "runtime/tests/python/everything";

/// Answers one HTTP request with `body` (JSON) and hands back what it
/// received.
fn one_http_answer(body: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then the body its Content-Length announces.
        loop {
            let n = stream.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + length || n == 0 {
                    break;
                }
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).unwrap();
        String::from_utf8_lossy(&got).to_string()
    });
    (port, handle)
}

/// The wrappers of http, pdf, files and jobs, called from Python against
/// real services: a loopback HTTP server, typst, files in a temp dir, the
/// queue.
async fn python_tasks_reach_every_capability(env: Env) {
    let (port, server) = one_http_answer(r#"{"ok":true,"reply":"了解"}"#);
    let root = tempfile::TempDir::new().unwrap();
    let host: runner::sandbox::host::services::HostConfig = toml::from_str(&format!(
        "[files.roots]\nout = {:?}\n[http]\n[pdf]\n",
        root.path().to_str().unwrap()
    ))
    .unwrap();
    let services = HostServices::from_config(&host).await.unwrap();
    let (hello, everything) = (python_task(HELLO), python_task(EVERYTHING));
    env.bind_bytes("hello-py", &hello, "py", |_| {}).await;
    env.bind_bytes("everything", &everything, "py", |b| {
        b.grants = serde_json::from_value(json!({
            "http": { "allow": [format!("http://127.0.0.1:{port}")] },
            "pdf": true,
            "files": { "out": "read-write" },
            "jobs": { "tasks": ["hello-py"] },
        }))
        .unwrap();
        b.retry.max_retries = 0;
    })
    .await;
    let sandbox = sandbox_with(&[&hello, &everything]).await;
    let w = env.worker_in(sandbox, services, cfg(&["py"], 4)).await;

    let j = run(
        &env,
        "everything",
        json!({
            "url": format!("http://127.0.0.1:{port}/hook"),
            "forbidden": "http://127.0.0.1:9/",
        }),
    )
    .await;
    let out = succeeded(&j);
    assert_eq!(j.progress.as_ref().map(|p| (p.done, p.total)), Some((4, 4)));

    // http: the request as sent, the answer as parsed; an ungranted host
    // is `Denied`.
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    let lower = request.to_ascii_lowercase();
    assert!(lower.contains("x-test: 1"), "{request}");
    assert!(
        lower.contains("content-type: application/json"),
        "{request}"
    );
    // Compact, as the SDK writes every JSON it sends (`dumps`).
    assert!(request.ends_with(r#"{"q":"進捗"}"#), "{request}");
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["content_type"], "application/json");
    assert_eq!(out["answer"], json!({"ok": true, "reply": "了解"}));
    let denied = out["denied"].as_str().unwrap();
    assert!(denied.starts_with("http.send: denied: "), "{denied}");

    // pdf and files: the PDF on disk reads back with pdftotext.
    let pdf_path = root.path().join("reports/w48.pdf");
    let bytes = std::fs::read(&pdf_path).unwrap();
    assert!(bytes.starts_with(b"%PDF"));
    assert_eq!(out["pdf_bytes"], bytes.len());
    let text = Command::new("pdftotext")
        .arg(&pdf_path)
        .arg("-")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for word in ["週報", "売上", "りんご", "合計", "以上"] {
        assert!(text.contains(word), "{word} not in:\n{text}");
    }
    assert_eq!(out["note"], "こんにちは");
    assert_eq!(out["reports"], json!(["reports/w48.pdf"]));
    assert!(out["used_by_root"].as_u64().unwrap() >= bytes.len() as u64);
    assert_eq!(out["would_delete"], json!(["notes/a.txt"]));
    assert_eq!(out["dry_run"], true);
    assert_eq!(out["deleted"], true);
    assert!(!root.path().join("notes/a.txt").exists());

    // jobs: the child ran; the chord ran its callback once.
    let child: JobId = out["child"].as_str().unwrap().parse().unwrap();
    let c = wait_final(&env.broker, child).await;
    assert_eq!(succeeded(&c)["greeting"], "Hello, child!");
    assert_eq!(c.parent, Some(j.id));
    let id: JobId = out["workflow"].as_str().unwrap().parse().unwrap();
    let workflows = runner::workflow::Workflows::new(env.producer.clone());
    let st = crate::worker_grants::wait_workflow(&workflows, id).await;
    assert_eq!(st.state, runner::queue::WfState::Succeeded, "{st:?}");
    assert_eq!((st.done, st.total), (3, 3));
    assert_eq!(st.result.as_ref().unwrap()["greeting"], "Hello, callback!");
    w.stop().await;
}

both_brokers!(python_tasks_run, python_tasks_reach_every_capability);
