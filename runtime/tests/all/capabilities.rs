//! Capabilities from a guest: the example tasks run through `runner run`
//! with a `runner.toml`, once with their grant and once without it, against
//! real services (an SMTP server, an HTTP server, files in a temp dir).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mailin_embedded::response::OK;
use mailin_embedded::{Handler, Response, Server};
use tempfile::TempDir;

use crate::support::guest;

/// `runner run <example> --config <config> [--task NAME] --input <input>`.
fn run(example: &str, config: &Path, task: Option<&str>, input: &str) -> Output {
    run_with(example, config, task, input, &[])
}

/// [`run`] with more arguments for `runner run`.
fn run_with(
    example: &str,
    config: &Path,
    task: Option<&str>,
    input: &str,
    extra: &[&str],
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.arg("run")
        .arg(guest(example))
        .arg("--config")
        .arg(config)
        .args(["--input", input])
        .args(extra)
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

    // A total past u64 is refused: it was printed as 0.
    let huge = r#"{"title": "t", "summary": "s",
        "rows": [["a", 18446744073709551615], ["b", 1]],
        "save_to": {"root": "reports", "path": "huge.pdf"}}"#;
    failed_with(
        &run("pdf_report", &config, Some("report"), huge),
        "the rows' total is too large",
    );
    assert!(!reports.join("huge.pdf").exists());
}

/// One message as the SMTP server received it.
#[derive(Debug, Clone, Default)]
struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
}

/// Keeps every message a client delivers.
#[derive(Clone, Default)]
struct Inbox {
    messages: Arc<Mutex<Vec<Received>>>,
    current: Received,
}

impl Handler for Inbox {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        self.current = Received {
            mail_from: from.to_owned(),
            ..Received::default()
        };
        OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        self.current.rcpt_to.push(to.to_owned());
        OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.messages.lock().unwrap().push(self.current.clone());
        OK
    }
}

/// A plain-text SMTP server (mailin-embedded) on a free loopback port; its
/// thread lives as long as the test process.
fn smtp_server() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let inbox = Inbox::default();
    let messages = inbox.messages.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut server = Server::new(inbox);
    server.with_name("localhost").with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    (port, messages)
}

#[test]
fn mailer_sends_through_smtp_with_the_grant_and_is_denied_without() {
    let (port, inbox) = smtp_server();
    let dir = TempDir::new().unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[host.mail]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
             from = {{ email = \"noreply@example.com\", name = \"Runner\" }}\n\
             return_path = \"bounces@example.com\"\n\n\
             [tasks.mailer.grants]\nmail = {{ allowed_senders = [\"*@reports.example.com\"] }}\n"
        ),
    );
    let input = r#"{"to": ["Ada <ada@example.org>"], "subject": "進捗のお知らせ",
        "text": "本日の進捗です。", "from": "Weekly <weekly@reports.example.com>"}"#;

    failed_with(
        &run("mailer", &config, None, input),
        "denied: this task is not granted `mail`",
    );
    // A sender outside the grant is refused by the service.
    let stranger = r#"{"to": ["ada@example.org"], "subject": "x", "text": "x",
        "from": "ceo@elsewhere.example"}"#;
    failed_with(
        &run("mailer", &config, Some("mailer"), stranger),
        "denied: sender 'ceo@elsewhere.example' is not allowed",
    );
    assert!(
        inbox.lock().unwrap().is_empty(),
        "nothing sent without a grant"
    );

    let out = success(&run("mailer", &config, Some("mailer"), input));
    let message_id = out["message_id"].as_str().unwrap().to_owned();
    let received = inbox.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    let m = &received[0];
    assert_eq!(m.mail_from, "bounces@example.com");
    assert_eq!(m.rcpt_to, ["ada@example.org"]);
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("the message parses");
    assert_eq!(parsed.subject(), Some("進捗のお知らせ"));
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim_end),
        Some("本日の進捗です。")
    );
    let from = parsed.from().and_then(|f| f.first()).unwrap();
    assert_eq!(from.address(), Some("weekly@reports.example.com"));
    assert_eq!(
        parsed.message_id().map(|id| format!("<{id}>")),
        Some(message_id)
    );
}

#[test]
fn mailer_writes_eml_files_with_the_dry_run_transport() {
    let dir = TempDir::new().unwrap();
    let outbox = dir.path().join("outbox");
    let config = write_config(
        &dir,
        &format!(
            "[host.mail]\ntransport = \"dry-run\"\ndir = {}\n\
             from = {{ email = \"noreply@example.com\" }}\n\n\
             [tasks.mailer.grants]\nmail = {{}}\n",
            toml_path(&outbox)
        ),
    );
    let input = r#"{"to": ["ada@example.org"], "subject": "Dry", "text": "run"}"#;
    let out = success(&run("mailer", &config, Some("mailer"), input));
    let id = out["message_id"].as_str().unwrap();
    let files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let eml = std::fs::read(&files[0]).unwrap();
    let parsed = mail_parser::MessageParser::default().parse(&eml).unwrap();
    assert_eq!(parsed.subject(), Some("Dry"));
    assert_eq!(
        parsed.message_id().map(|m| format!("<{m}>")).as_deref(),
        Some(id)
    );

    // A typo in [host.mail] is refused with the key's name.
    let typo = write_config(
        &dir,
        "[host.mail]\ntransport = \"dry-run\"\ndri = \"x\"\nfrom = { email = \"a@example.com\" }\n",
    );
    let output = run("mailer", &typo, None, input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("dri"), "{stderr}");
    // The dry-run transport needs its directory.
    let no_dir = write_config(
        &dir,
        "[host.mail]\ntransport = \"dry-run\"\nfrom = { email = \"a@example.com\" }\n",
    );
    let output = run("mailer", &no_dir, None, input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("mail.dir"), "{stderr}");
}

/// An HTTP/1.1 server on a free loopback port that answers every request
/// with 200 `{"ok":true}` and keeps each request's raw bytes.
fn http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as much body as Content-Length says.
            loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if raw.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&raw).into_owned());
            let body = r#"{"ok":true}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, requests)
}

#[test]
fn webhook_posts_to_an_allowed_loopback_server_and_is_denied_otherwise() {
    let (port, requests) = http_server();
    let dir = TempDir::new().unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[host.http]\n\n\
             [tasks.hook.grants]\nhttp = {{ allow = [\"http://127.0.0.1:{port}\"], private_networks = [\"127.0.0.1/32\"] }}\n\n\
             [tasks.by-name.grants]\nhttp = {{ allow = [\"http://localhost:{port}\"] }}\n"
        ),
    );
    let input = format!(
        r#"{{"url": "http://127.0.0.1:{port}/hooks/build", "kind": "json", "payload": {{"build": 42, "status": "green"}}}}"#
    );

    failed_with(
        &run("webhook", &config, None, &input),
        "denied: this task is not granted `http`",
    );
    // Granted a name that resolves to loopback, which the grant does not
    // name as a network: refused after resolution by the SSRF policy.
    let by_name = input.replace("127.0.0.1", "localhost");
    failed_with(
        &run("webhook", &config, Some("by-name"), &by_name),
        "denied: 'localhost' resolves only to addresses this task may not reach",
    );
    // A host the grant does not list.
    failed_with(
        &run("webhook", &config, Some("by-name"), &input),
        &format!("denied: http://127.0.0.1:{port} is not in this task's allowed hosts"),
    );
    assert!(
        requests.lock().unwrap().is_empty(),
        "nothing reached the server"
    );

    let out = success(&run("webhook", &config, Some("hook"), &input));
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"], r#"{"ok":true}"#, "{out}");
    let seen = requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("POST /hooks/build HTTP/1.1"),
        "{}",
        seen[0]
    );
    let body = seen[0].split_once("\r\n\r\n").unwrap().1;
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json, serde_json::json!({"build": 42, "status": "green"}));
}

#[test]
fn a_host_call_that_hangs_ends_the_run_at_its_time_limit() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let dir = TempDir::new().unwrap();
    let config = write_config(
        &dir,
        &format!(
            "[host.http]\ndefault_timeout = 120\n\n\
             [tasks.hook.grants]\nhttp = {{ allow = [\"http://127.0.0.1:{port}\"], private_networks = [\"127.0.0.1/32\"] }}\n"
        ),
    );
    let input = format!(r#"{{"url": "http://127.0.0.1:{port}/", "kind": "json"}}"#);
    let started = Instant::now();
    let output = run_with(
        "webhook",
        &config,
        Some("hook"),
        &input,
        &["--timeout", "1s"],
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(14), "time limit: {stderr}");
    assert!(stderr.contains("time limit"), "{stderr}");
    // Ended by the 1 s limit (the 120 s HTTP timeout would have been a
    // retry, exit 11), and not before it.
    assert!(took >= Duration::from_secs(1), "{took:?}");
}

/// `runner run --config` reads the file as every command does: the
/// `RUNNER_SMTP_*` overrides apply (here the host the file names does not
/// exist; the environment points at the real server).
#[test]
fn run_with_config_honours_the_smtp_environment_overrides() {
    let (port, inbox) = smtp_server();
    let dir = TempDir::new().unwrap();
    let config = write_config(
        &dir,
        "[host.mail]\nhost = \"smtp.invalid\"\nport = 1\ntls = \"none\"\n\
         from = { email = \"noreply@example.com\" }\n\n\
         [tasks.mailer.grants]\nmail = { allowed_senders = [\"*@example.com\"] }\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("run")
        .arg(guest("mailer"))
        .arg("--config")
        .arg(&config)
        .args(["--task", "mailer"])
        .args([
            "--input",
            r#"{"to": ["ada@example.org"], "subject": "override", "text": "via env"}"#,
        ])
        .env("RUNNER_SMTP_HOST", "127.0.0.1")
        .env("RUNNER_SMTP_PORT", port.to_string())
        .env_remove("RUNNER_CACHE_DIR")
        .env_remove("RUNNER_REDIS_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("running the runner binary");
    success(&output);
    let received = inbox.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].rcpt_to, ["ada@example.org"]);
}
