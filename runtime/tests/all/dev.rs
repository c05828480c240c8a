//! `runner dev` and the CLI as the README's tour uses them: the built
//! binary, started as a user starts it, driven by `runner upload`, `call`,
//! `beats fire`, `inspect` and by plain HTTP (what curl sends).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{files_with_ext, guest, ok_stdout as ok};

struct Dev {
    child: Child,
    url: String,
    token: String,
}

/// `runner dev --data-dir DATA`, without the variables of the
/// environment it reads.
fn dev_command(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(["dev", "--data-dir"]).arg(data);
    for var in [
        "RUNNER_TOKEN",
        "RUNNER_REDIS_URL",
        "RUNNER_CONFIG",
        "RUNNER_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

impl Dev {
    fn start(data: &Path) -> Dev {
        Self::start_with(data, &[])
    }

    fn start_with(data: &Path, extra: &[&str]) -> Dev {
        let mut cmd = dev_command(data);
        cmd.args(["--listen", "127.0.0.1:0"]).args(extra);
        Self::spawn(cmd)
    }

    /// Starts `cmd` (a [`dev_command`]) and reads its URL and token.
    fn spawn(mut cmd: Command) -> Dev {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting runner dev");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut token) = (None, None);
        let started = Instant::now();
        while url.is_none() || token.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "runner dev did not start"
            );
            let line = lines.next().expect("runner dev exited").unwrap();
            if let Some(rest) = line.strip_prefix("runner dev: ") {
                url = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if let Some(rest) = line.strip_prefix("admin token: ") {
                token = Some(rest.trim().to_string());
            }
        }
        // Keep draining stdout so the child never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Dev {
            child,
            url: url.unwrap(),
            token: token.unwrap(),
        }
    }

    fn runner(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .env("RUNNER_URL", &self.url)
            .env("RUNNER_TOKEN", &self.token)
            .output()
            .expect("running the runner binary")
    }

    /// A request to `path` with the admin token, as curl sends it.
    fn http(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        crate::support::blocking_http_client()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    /// `GET /v1/jobs/ID?wait=30s`: the job once it has ended.
    fn wait_job(&self, id: &str) -> serde_json::Value {
        self.http(reqwest::Method::GET, &format!("/v1/jobs/{id}?wait=30s"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

/// A test that fails leaves no `runner dev` behind.
impl Drop for Dev {
    fn drop(&mut self) {
        // Nothing is sent to a child already waited for (`stop`).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dev_runs_the_readme_tour() {
    let data = TempDir::new().unwrap();
    let dev = Dev::start(data.path());

    // The built-in tasks and examples are bound.
    let tasks = ok(&dev.runner(&["inspect", "tasks"]));
    for t in ["reminder", "report", "cleanup", "notify", "hello"] {
        assert!(
            tasks.lines().any(|l| l.starts_with(t)),
            "{t} not bound:\n{tasks}"
        );
    }

    // A built-in example, enqueued and waited for.
    let out = ok(&dev.runner(&[
        "call",
        "hello",
        "--input",
        r#"{"name":"README"}"#,
        "--wait",
        "60s",
    ]));
    assert!(out.contains("SUCCESS") && out.contains("README"), "{out}");

    // Your own task: upload and bind with the CLI, enqueue it.
    let wasm = guest("my_first_task");
    let out = ok(&dev.runner(&["upload", wasm.to_str().unwrap(), "--bind", "order-total"]));
    assert!(out.contains("bound order-total"), "{out}");
    // Several files: a line each on stdout, as for one. (They went to the
    // progress bar, which wrote nothing when stderr was no terminal.)
    let sleeper = guest("sleeper");
    let out = ok(&dev.runner(&["upload", wasm.to_str().unwrap(), sleeper.to_str().unwrap()]));
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("sha256:")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].contains("sleeper"), "{out}");
    // A binding's flag with no binding is refused, not ignored.
    let out = dev.runner(&["upload", wasm.to_str().unwrap(), "--queue", "q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--queue sets the binding of --bind NAME"),
        "{stderr}"
    );
    let out = ok(&dev.runner(&[
        "call",
        "order-total",
        "--input",
        r#"{"items":[{"name":"りんご","price":120,"quantity":3}],"tax_percent":10}"#,
        "--wait",
    ]));
    assert!(out.contains("\"total\": 396"), "{out}");

    // The same with HTTP alone (what the README's curl lines send).
    let bytes = std::fs::read(&wasm).unwrap();
    let res = dev
        .http(reqwest::Method::POST, "/v1/modules")
        .body(bytes)
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "already uploaded: 200");
    let hash = res.json::<serde_json::Value>().unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let res = dev
        .http(reqwest::Method::PUT, "/v1/tasks/order-total-2")
        .json(&serde_json::json!({ "module": hash }))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = dev
        .http(reqwest::Method::POST, "/v1/jobs")
        .json(&serde_json::json!({ "task": "order-total-2", "input": {"items": [{"name": "x", "price": 5, "quantity": 2}]} }))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    let id = res.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = dev.wait_job(&id);
    assert_eq!(job["result"]["total"], 10, "{job}");

    // A batch: one id per line on stdout, each job runs.
    let out = ok(&dev.runner(&[
        "call",
        "hello",
        "--input",
        r#"{"name":"many"}"#,
        "--repeat",
        "30",
    ]));
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 30, "{out}");
    for id in [ids[0], ids[29]] {
        let job = dev.wait_job(id);
        assert_eq!(job["state"], "SUCCESS", "{job}");
    }

    // Fire the reminder beat by hand: the mail is in the dry-run directory.
    let out = ok(&dev.runner(&["beats", "fire", "morning-reminder", "--wait", "60s"]));
    assert!(
        out.contains("SUCCESS") && out.contains("\"sent\": 1"),
        "{out}"
    );
    let mails = files_with_ext(&data.path().join("mail"), "eml");
    assert_eq!(mails.len(), 1, "{mails:?}");
    let text = std::fs::read_to_string(&mails[0]).unwrap();
    assert!(text.contains("taro@localhost"), "{text}");
    // A second fire the same day mails nobody.
    let out = ok(&dev.runner(&["beats", "fire", "morning-reminder", "--wait", "60s"]));
    assert!(out.contains("\"sent\": 0"), "{out}");
    assert_eq!(files_with_ext(&data.path().join("mail"), "eml").len(), 1);

    // The report beat: a PDF under the reports root, mailed too.
    let out = ok(&dev.runner(&["beats", "fire", "daily-report", "--wait", "60s"]));
    assert!(out.contains("SUCCESS"), "{out}");
    let pdfs = files_with_ext(&data.path().join("files").join("reports"), "pdf");
    assert_eq!(pdfs.len(), 1, "{pdfs:?}");
    let text = Command::new("pdftotext")
        .arg(&pdfs[0])
        .arg("-")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("日次業務レポート"));
    assert_eq!(files_with_ext(&data.path().join("mail"), "eml").len(), 2);

    let beats = ok(&dev.runner(&["beats", "list"]));
    assert!(
        beats.contains("morning-reminder") && beats.contains("Asia/Tokyo"),
        "{beats}"
    );
    let queues = ok(&dev.runner(&["inspect", "queues"]));
    assert!(
        queues.contains("email") && queues.contains("reports"),
        "{queues}"
    );

    // A refused request: exit 2 with the server's message.
    let out = dev.runner(&["call", "no-such-task"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-task"));
    // Flags JSON cannot carry, or past any deadline: refused by name
    // before anything is sent (NaN went as null, "not set", and the job
    // ran at once; the long wait panicked).
    for (flag, value) in [
        ("--countdown", "nan"),
        ("--expires", "inf"),
        ("--wait", "300000000000y"),
    ] {
        let out = dev.runner(&["call", "hello", flag, value]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }

    let status = dev.stop();
    assert!(status.success(), "runner dev exited with {status}");
}

/// `runner dev --redis URL`: the same system on a real Redis, where the
/// jobs and the kv store then live.
#[test]
fn dev_runs_on_redis_with_the_redis_flag() {
    let redis = crate::redis_support::RedisServer::start();
    let data = TempDir::new().unwrap();
    let dev = Dev::start_with(data.path(), &["--redis", &redis.url()]);
    let out = ok(&dev.runner(&[
        "call",
        "hello",
        "--input",
        r#"{"name":"redis"}"#,
        "--wait",
        "60s",
    ]));
    assert!(
        out.contains("SUCCESS") && out.contains("Hello, redis!"),
        "{out}"
    );
    let out = ok(&dev.runner(&["beats", "fire", "morning-reminder", "--wait", "60s"]));
    assert!(out.contains("\"sent\": 1"), "{out}");
    // The job records and the kv day key are in that Redis.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.iter().any(|k| k.contains(":job:")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("remind:taro:")), "{keys:?}");
    let status = dev.stop();
    assert!(status.success(), "runner dev exited with {status}");
}

/// The CLI sends a name as written, percent-encoded in the path: one with
/// `#` or `?` is refused by the server (naming it) and changes nothing.
/// Before, `report#2` and `report?` reached the server as `report`: `beats
/// add` replaced that beat and `beats rm` deleted it.
#[test]
fn dev_cli_sends_names_as_written() {
    let data = TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    ok(&dev.runner(&["beats", "add", "report", "--task", "hello", "--every", "1h"]));
    let show = || -> serde_json::Value {
        serde_json::from_str(&ok(&dev.runner(&["beats", "show", "report"]))).unwrap()
    };
    let before = show();
    assert_eq!(before["every"], "1h", "{before}");
    // Each refused (400, or 404 for a beat of that name), naming it.
    for (args, name) in [
        (
            vec![
                "beats", "add", "report#2", "--task", "hello", "--every", "5m",
            ],
            "report#2",
        ),
        (vec!["beats", "rm", "report?"], "report?"),
        (vec!["beats", "disable", "report#"], "report#"),
        (vec!["bind", "hello#v2", "--rollback"], "hello#v2"),
        (vec!["purge", "report?x", "--yes"], "report?x"),
    ] {
        let out = dev.runner(&args);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {said}");
        assert!(said.contains(name), "{args:?}: {said}");
    }
    assert_eq!(show(), before);
    dev.stop();
}

/// `runner purge` and `runner revoke --task`: without `--yes` they say
/// what they would do and do nothing (exit 1); with it they do it and list
/// every job touched.
#[test]
fn dev_purges_and_revokes_in_bulk_from_the_cli() {
    let data = TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    let enqueue = |task: &str, input: serde_json::Value| -> String {
        let v: serde_json::Value = dev
            .http(reqwest::Method::POST, "/v1/jobs")
            .json(&serde_json::json!({ "task": task, "input": input, "countdown": 600 }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["id"].as_str().expect("an id").to_string()
    };
    let hellos: Vec<String> = (0..3)
        .map(|i| enqueue("hello", serde_json::json!({ "name": format!("h{i}") })))
        .collect();
    let job = |id: &str| -> serde_json::Value {
        dev.http(reqwest::Method::GET, &format!("/v1/jobs/{id}"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let state = |id: &str| job(id)["state"].as_str().unwrap().to_string();
    let queue = job(&hellos[0])["queue"].as_str().unwrap().to_string();

    // What waits, and (nothing) what runs.
    let listed = ok(&dev.runner(&["inspect", "scheduled", &queue]));
    for id in &hellos {
        assert!(listed.contains(id.as_str()), "{id} not listed:\n{listed}");
    }
    let active = ok(&dev.runner(&["inspect", "active"]));
    assert_eq!(active.lines().count(), 1, "only the header:\n{active}");
    let reserved = ok(&dev.runner(&["inspect", "reserved"]));
    assert_eq!(reserved.lines().count(), 1, "only the header:\n{reserved}");

    let out = dev.runner(&["purge", &queue, "--task", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("3 waiting jobs of task hello would be purged"),
        "{said}"
    );
    assert!(said.contains("--yes"), "{said}");
    assert_eq!(state(&hellos[0]), "PENDING");

    let out = dev.runner(&["revoke", "--task", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("3 waiting and 0 running jobs would be revoked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ok(&dev.runner(&["revoke", "--task", "hello", "--queue", &queue, "--yes"]));
    assert!(
        out.starts_with("revoked 3 waiting jobs; 0 running\n"),
        "{out}"
    );
    for id in &hellos {
        assert!(out.contains(id.as_str()), "{id} not listed:\n{out}");
        assert_eq!(state(id), "REVOKED");
    }

    // Found again by state (any case) and task, newest first.
    let found = ok(&dev.runner(&["jobs", "list", "--state", "revoked", "--task", "hello"]));
    let rows: Vec<&str> = found.lines().skip(1).collect();
    let firsts: Vec<&str> = rows
        .iter()
        .map(|r| r.split_whitespace().next().unwrap())
        .collect();
    let mut newest_first = hellos.clone();
    newest_first.reverse();
    assert_eq!(firsts, newest_first, "{found}");
    assert!(rows.iter().all(|r| r.contains("REVOKED")), "{found}");
    let out = dev.runner(&["jobs", "list", "--task", "hello", "--limit", "2"]);
    assert_eq!(ok(&out).lines().count(), 3, "a header and two jobs");
    let more = String::from_utf8_lossy(&out.stderr);
    assert!(more.contains(&format!("--cursor {}", hellos[1])), "{more}");
    let out = dev.runner(&["jobs", "list", "--state", "DONE"]);
    assert_eq!(out.status.code(), Some(2), "a refused request");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("state: \"DONE\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let more = enqueue("hello", serde_json::json!({ "name": "again" }));
    let out = ok(&dev.runner(&["purge", &queue, "--delayed-only", "--yes"]));
    assert_eq!(
        out,
        format!("purged 1 delayed jobs from queue {queue}\n{more}\n")
    );
    assert_eq!(state(&more), "REVOKED");

    // Neither an id nor a filter: clap says what is missing.
    let out = dev.runner(&["revoke"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(dev.stop().success());
}

/// `runner workflow submit | watch | status | revoke` against `runner dev`:
/// a chain that hands outputs on, watched to its end; a bad file refused
/// with the step named (exit 2); a delayed workflow revoked.
#[test]
fn dev_runs_workflows_from_the_cli() {
    let data = TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    let dir = TempDir::new().unwrap();
    let write = |name: &str, v: serde_json::Value| -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.to_str().unwrap().to_string()
    };
    let good = write(
        "greet.json",
        serde_json::json!({"workflow": {"chain": [
            {"group": [{"task": "hello", "input": {"name": "a"}}, {"task": "hello", "input": {"name": "b"}}]},
            {"task": "hello", "input": {"name": "end"}, "previous": "greetings"}
        ]}}),
    );
    let out = ok(&dev.runner(&["workflow", "submit", &good, "--watch"]));
    assert!(out.contains("\"created\": true"), "{out}");
    assert!(out.contains("succeeded 3/3"), "{out}");
    assert!(
        out.contains("Hello, end!"),
        "the last status has the result: {out}"
    );
    let id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"id\": \""))
        .and_then(|l| l.split('"').next())
        .expect("the workflow's id")
        .to_string();
    let out = ok(&dev.runner(&["workflow", "status", &id]));
    assert!(out.contains("\"state\": \"succeeded\""), "{out}");

    let bad = write(
        "bad.json",
        serde_json::json!({"workflow": {"chain": [{"task": "hello"}, {"group": []}]}}),
    );
    let out = dev.runner(&["workflow", "submit", &bad]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("workflow.chain[1].group: an empty group"),
        "{err}"
    );

    let later = write(
        "later.json",
        serde_json::json!({"workflow": {"chain": [
            {"task": "hello", "input": {"name": "x"}, "countdown": 600},
            {"task": "hello"}
        ]}}),
    );
    let out = ok(&dev.runner(&["workflow", "submit", &later]));
    let id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"id\": \""))
        .and_then(|l| l.split('"').next())
        .unwrap()
        .to_string();
    let out = dev.runner(&["workflow", "status", &id]);
    assert_eq!(out.status.code(), Some(3), "still running: {out:?}");
    let out = ok(&dev.runner(&["workflow", "revoke", &id]));
    assert!(out.contains("\"state\": \"revoked\""), "{out}");
    let out = dev.runner(&["workflow", "status", &id, "--wait", "10s"]);
    assert_eq!(out.status.code(), Some(4), "revoked: {out:?}");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("\"state\": \"revoked\""), "{shown}");
    let out = dev.runner(&["workflow", "status", "0190a0a0-0000-7000-8000-000000000000"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(dev.stop().success());
}

/// Waits at most `within` for `child` to exit; kills it and fails if it
/// has not (a hang).
fn exit_within(child: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A listing read by a reader that stops early (`runner jobs list | head
/// -1`) stops quietly: exit 0, no panic. Before, `println!` panicked on the
/// closed pipe (exit 101, "Broken pipe" in a panic message). The outputs
/// are far larger than a pipe's buffer, so they are still being written
/// when the reader goes.
#[test]
fn dev_listings_stop_quietly_when_their_reader_goes() {
    let data = TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    let out = dev.runner(&[
        "call",
        "hello",
        "--input",
        r#"{"name":"later"}"#,
        "--countdown",
        "600",
        "--repeat",
        "1000",
    ]);
    let ids = ok(&out);
    assert_eq!(ids.lines().count(), 1000);
    let job: serde_json::Value = dev
        .http(
            reqwest::Method::GET,
            &format!("/v1/jobs/{}", ids.lines().next().unwrap()),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let queue = job["queue"].as_str().expect("a queue").to_string();
    for args in [
        vec!["jobs", "list", "--limit", "1000", "--json"],
        vec!["jobs", "list", "--limit", "1000"],
        vec!["inspect", "scheduled", &queue, "--limit", "1000"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(&args)
            .env("RUNNER_URL", &dev.url)
            .env("RUNNER_TOKEN", &dev.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let said = std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
            text
        });
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?}: nothing printed");
        // The reader goes (dropped above): the pipe is closed.
        let status = exit_within(&mut child, Duration::from_secs(60), &args.join(" "));
        let said = said.join().unwrap();
        assert!(!said.contains("panicked"), "{args:?}: {said}");
        assert!(status.success(), "{args:?}: {status}: {said}");
    }
    assert!(dev.stop().success());
}

/// `runner dev` listens where `RUNNER_LISTEN` says when `--listen` is not
/// given, and its `--help` does not print the Redis URL of
/// `RUNNER_REDIS_URL` (its password). Before, `--listen`'s default
/// overrode the environment (and the file), and the help showed the URL.
#[test]
fn dev_listens_where_the_environment_says_and_hides_the_redis_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = TempDir::new().unwrap();
    let mut cmd = dev_command(data.path());
    cmd.env("RUNNER_LISTEN", format!("127.0.0.1:{port}"));
    let dev = Dev::spawn(cmd);
    assert_eq!(dev.url, format!("http://127.0.0.1:{port}"));
    assert!(dev.stop().success());

    let help = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["dev", "--help"])
        .env("RUNNER_REDIS_URL", "redis://:s3cretpw@h:1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("RUNNER_REDIS_URL"), "{text}");
    assert!(!text.contains("s3cretpw"), "{text}");
}

/// A second `runner dev` on a data directory another one uses is refused
/// (exit 1, naming the directory) and the first goes on. Before, both
/// ran, each with its own copy of the task bindings, and each bind saved
/// over the other's.
#[test]
fn dev_refuses_a_data_directory_another_dev_uses() {
    let data = TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    let mut second = dev_command(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = exit_within(
        &mut second,
        Duration::from_secs(60),
        "the second runner dev",
    );
    let mut said = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut said).unwrap();
    assert_eq!(status.code(), Some(1), "{said}");
    let dir = std::fs::canonicalize(data.path()).unwrap();
    assert!(
        said.contains(&dir.display().to_string()) && said.contains("another `runner dev`"),
        "{said}"
    );
    // The first still works.
    let out = ok(&dev.runner(&["inspect", "tasks"]));
    assert!(out.contains("hello"), "{out}");
    assert!(dev.stop().success());
}

/// Stopping `runner dev` answers its open long polls at once, with the job
/// as it is. Before, the stop waited for each of them, up to five minutes.
#[test]
fn dev_stops_without_waiting_for_its_long_polls() {
    let data = TempDir::new().unwrap();
    let mut dev = Dev::start(data.path());
    let out = dev.runner(&["call", "hello", "--input", "{}", "--countdown", "600"]);
    let id = ok(&out).trim().to_string();
    let poll = dev
        .http(reqwest::Method::GET, &format!("/v1/jobs/{id}?wait=300s"))
        .timeout(Duration::from_secs(400));
    let answer = std::thread::spawn(move || {
        let r = poll.send().unwrap();
        (r.status(), r.json::<serde_json::Value>().unwrap())
    });
    // Long enough for a loopback request to be in its wait.
    std::thread::sleep(Duration::from_secs(2));
    let pid = dev.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = exit_within(&mut dev.child, Duration::from_secs(60), "runner dev");
    assert!(status.success(), "{status}");
    let (s, job) = answer.join().unwrap();
    assert_eq!(s, reqwest::StatusCode::OK, "{job}");
    assert_eq!(job["state"], "PENDING", "{job}");
}

/// A second stop while `runner dev` waits for a running job (its grace
/// period is 30 s) ends it at once, as a second Ctrl-C does with Celery.
#[test]
fn dev_stops_at_once_when_told_twice() {
    let data = TempDir::new().unwrap();
    let mut dev = Dev::start(data.path());
    let wasm = guest("sleeper");
    ok(&dev.runner(&["upload", wasm.to_str().unwrap(), "--bind", "nap"]));
    let out = dev.runner(&["call", "nap", "--input", r#"{"ms":300000}"#]);
    let id = ok(&out).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job: serde_json::Value = dev
            .http(reqwest::Method::GET, &format!("/v1/jobs/{id}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if job["state"] == "STARTED" {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = dev.child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    // The first stop is under way (the worker waits for the nap)...
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        dev.child.try_wait().unwrap().is_none(),
        "stopped before its grace"
    );
    // ...and the second ends it, well before the grace period is over.
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = exit_within(&mut dev.child, Duration::from_secs(15), "runner dev");
    assert_eq!(status.code(), Some(1), "{status}");
}

/// A server that cannot be reached is said with its cause ("Connection
/// refused"), not only reqwest's "error sending request for url".
#[test]
fn an_unreachable_server_is_said_with_its_cause() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["status", &uuid::Uuid::now_v7().to_string()])
        .env("RUNNER_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
}

/// A `RUNNER_*` variable set to nothing counts as unset, as an env file's
/// `RUNNER_REDIS_URL=` means: `runner dev` runs on its embedded broker with
/// a token of its own. Before, it tried to connect to Redis at "" (and an
/// empty `RUNNER_CONFIG` or `RUNNER_TOKEN` was refused).
#[test]
fn empty_variables_count_as_unset() {
    let data = TempDir::new().unwrap();
    let mut cmd = dev_command(data.path());
    cmd.args(["--listen", "127.0.0.1:0"]);
    for var in [
        "RUNNER_REDIS_URL",
        "RUNNER_TOKEN",
        "RUNNER_CONFIG",
        "RUNNER_METRICS_LISTEN",
    ] {
        cmd.env(var, "");
    }
    let dev = Dev::spawn(cmd);
    assert!(dev.token.len() >= 16, "{}", dev.token);
    let tasks = ok(&dev.runner(&["inspect", "tasks"]));
    assert!(tasks.lines().any(|l| l.starts_with("hello")), "{tasks}");
}
