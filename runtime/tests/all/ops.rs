//! What operators watch: `runner worker` and `runner scheduler` started
//! before Redis wait for it (logging once) instead of exiting, and serve
//! `/healthz`, `/readyz` and `/metrics` on their own address.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner::app::Core;
use runner::config::Config;
use runner::producer::EnqueueRequest;
use runner::queue::JobState;
use tempfile::TempDir;

use crate::redis_support::{RedisServer, free_port};
use crate::support::{guest, http_client, sandbox};
use crate::wiring::{toml_str, write_config};

/// A `runner` process whose stderr goes to a file, killed when dropped.
pub(crate) struct Logged {
    child: Child,
    log: std::path::PathBuf,
}

impl Logged {
    pub(crate) fn start(
        args: &[&str],
        config: &std::path::Path,
        log: std::path::PathBuf,
        envs: &[(&str, String)],
    ) -> Logged {
        let child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .arg("--config")
            .arg(config)
            .env_remove("RUNNER_REDIS_URL")
            .env_remove("RUNNER_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Logged { child, log }
    }

    /// The port of its `/metrics` (`--metrics-listen 127.0.0.1:0`), from
    /// the line it prints once it listens.
    pub(crate) fn metrics_port(&self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let port = self.log().lines().find_map(|l| {
                l.strip_prefix("metrics: http://127.0.0.1:")?
                    .strip_suffix("/metrics")?
                    .parse()
                    .ok()
            });
            if let Some(port) = port {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "no metrics address in its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, once it exits; fails the test (a hang) if it has
    /// not within `within`.
    pub(crate) async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM...) to the process.
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for the process to exit (after a SIGTERM); its exit status.
    pub(crate) fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

/// A `NOTIFY_SOCKET` as systemd's: what a process tells it (sd_notify).
pub(crate) struct Systemd {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl Systemd {
    pub(crate) fn listen(dir: &std::path::Path, name: &str) -> Systemd {
        let path = dir.join(name);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        Systemd { socket, path }
    }

    pub(crate) fn env(&self) -> (&'static str, String) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap().to_string())
    }

    /// The next message within `within`, or None.
    pub(crate) fn next(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `url`: its status and body, or None while nothing listens.
pub(crate) async fn get(url: &str) -> Option<(u16, String)> {
    let r = http_client().get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// Polls `url` until `ok` holds for its answer; the last answer.
pub(crate) async fn until(url: &str, what: &str, ok: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get(url).await;
        if let Some((s, body)) = &answer
            && ok(*s, body)
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{url}: not {what} within 30 s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_before_redis_wait_for_it_and_report_readiness() {
    let port = free_port();
    let (worker_ops, scheduler_ops) = (free_port(), free_port());
    let dir = TempDir::new().unwrap();
    let text = format!(
        "[broker]\nredis_url = {}\n\n\
         [worker]\nqueues = [\"default\"]\nconcurrency = 1\nmetrics_listen = \"127.0.0.1:{worker_ops}\"\n\n\
         [scheduler]\nmetrics_listen = \"127.0.0.1:{scheduler_ops}\"\n\n\
         [tasks.hello]\nmodule = {}\n\n\
         [[beats]]\nname = \"tick\"\ntask = \"hello\"\nevery = \"1s\"\ninput = {{ name = \"beat\" }}\n",
        toml_str(&format!("redis://127.0.0.1:{port}/")),
        toml_str(guest("hello").to_str().unwrap()),
    );
    let path = write_config(&dir, &text);
    let api = format!("127.0.0.1:{}", free_port());
    // Each as a Type=notify unit: it says READY=1 only once it is.
    let systemd = ["api", "worker", "scheduler"].map(|p| Systemd::listen(dir.path(), p));
    let mut serve = Logged::start(
        &["serve", "--listen", &api],
        &path,
        dir.path().join("api.log"),
        &[
            (
                "RUNNER_ADMIN_TOKENS",
                "ops-admin-token-0123456789".to_string(),
            ),
            systemd[0].env(),
        ],
    );
    let worker = Logged::start(
        &["worker"],
        &path,
        dir.path().join("worker.log"),
        &[systemd[1].env()],
    );
    let scheduler = Logged::start(
        &["scheduler"],
        &path,
        dir.path().join("scheduler.log"),
        &[systemd[2].env()],
    );
    let w = |p: &str| format!("http://127.0.0.1:{worker_ops}{p}");
    let s = |p: &str| format!("http://127.0.0.1:{scheduler_ops}{p}");

    // No Redis yet: alive, not ready, and still there a while later.
    for url in [w("/healthz"), s("/healthz")] {
        until(&url, "alive", |status, _| status == 200).await;
    }
    for url in [w("/readyz"), s("/readyz")] {
        let (status, body) = get(&url).await.unwrap();
        assert_eq!(status, 503, "{url}: {body}");
        assert!(body.contains("waiting for Redis"), "{url}: {body}");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&w("/healthz")).await.map(|a| a.0), Some(200));
    for (s, name) in systemd.iter().zip(["api", "worker", "scheduler"]) {
        assert_eq!(
            s.next(Duration::from_millis(10)),
            None,
            "{name} told systemd"
        );
    }

    // Redis comes: both connect; the worker runs a job, the scheduler fires.
    let mut redis = RedisServer::start_on(port);
    let mut config = Config::from_toml(&text).unwrap();
    config.base_dir = dir.path().to_path_buf();
    let core = Core::open(&config, sandbox()).await.unwrap();
    core.apply_tasks(&config).await.unwrap();
    until(&w("/readyz"), "ready", |status, _| status == 200).await;
    until(&s("/readyz"), "ready", |status, _| status == 200).await;
    // The API too came up once Redis did (it waited; before, it exited).
    until(&format!("http://{api}/readyz"), "ready", |status, _| {
        status == 200
    })
    .await;
    for (s, name) in systemd.iter().zip(["api", "worker", "scheduler"]) {
        let said = s.next(Duration::from_secs(30));
        assert_eq!(said.as_deref(), Some("READY=1"), "{name}");
    }
    let id = core
        .producer
        .enqueue(EnqueueRequest::task("hello", r#"{"name":"ops"}"#))
        .await
        .unwrap()
        .job
        .id;
    let job = core
        .broker
        .wait(id, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Success, "{job:?}");

    let metrics = until(&w("/metrics"), "counting the job", |_, body| {
        body.contains("runner_jobs_total{") && body.contains("outcome=\"success\"")
    })
    .await;
    for name in [
        "runner_job_seconds_bucket{",
        "runner_job_wait_seconds",
        "runner_queue_jobs{queue=\"default\",state=\"ready\"}",
        "runner_queue_jobs{queue=\"default\",state=\"dead\"}",
        "runner_module_cache_total{result=\"miss\"}",
        "runner_module_load_seconds",
        "runner_job_fuel",
        "runner_job_memory_bytes_bucket{task=\"hello\",le=\"65536\"}",
    ] {
        assert!(
            metrics.contains(name),
            "worker /metrics lacks {name}:\n{metrics}"
        );
    }
    until(&s("/metrics"), "counting a fire", |_, body| {
        body.contains("runner_beat_fires_total{result=\"fired\"}")
    })
    .await;

    // Waiting was logged once, however long it took.
    for p in [&serve, &worker, &scheduler] {
        let log = p.log();
        assert_eq!(log.matches("waiting for Redis at").count(), 1, "{log}");
        // A probe answered "not ready" is not a failed request.
        assert!(!log.contains("request failed"), "{log}");
    }

    // Stopped as systemd stops it (SIGTERM): it says so, and exits cleanly.
    serve.signal(libc::SIGTERM);
    assert_eq!(
        systemd[0].next(Duration::from_secs(30)).as_deref(),
        Some("STOPPING=1")
    );
    assert!(serve.wait().success(), "{}", serve.log());

    // Redis goes: the worker is alive but not ready.
    redis.stop();
    until(&w("/readyz"), "unready", |status, _| status == 503).await;
    until(&w("/metrics"), "counting the lost connection", |_, body| {
        body.contains("runner_redis_reconnects_total{connection=\"signals\"}")
    })
    .await;
    assert_eq!(get(&w("/healthz")).await.map(|a| a.0), Some(200));
}

/// Stopped as systemd stops a unit (SIGTERM) while it still waits for
/// Redis, each process says so and exits successfully, as it does when
/// stopped once up. Before, the wait ended in an error (exit 1): systemd
/// recorded a failed unit for an ordinary stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_stopped_while_waiting_for_redis_exit_successfully() {
    let port = free_port();
    let (worker_ops, scheduler_ops) = (free_port(), free_port());
    let dir = TempDir::new().unwrap();
    let text = format!(
        "[broker]\nredis_url = {}\n\n\
         [worker]\nqueues = [\"default\"]\nconcurrency = 1\nmetrics_listen = \"127.0.0.1:{worker_ops}\"\n\n\
         [scheduler]\nmetrics_listen = \"127.0.0.1:{scheduler_ops}\"\n",
        toml_str(&format!("redis://127.0.0.1:{port}/")),
    );
    let path = write_config(&dir, &text);
    let api = format!("127.0.0.1:{}", free_port());
    let mut processes = [
        Logged::start(
            &["serve", "--listen", &api],
            &path,
            dir.path().join("api.log"),
            &[(
                "RUNNER_ADMIN_TOKENS",
                "ops-admin-token-0123456789".to_string(),
            )],
        ),
        Logged::start(&["worker"], &path, dir.path().join("worker.log"), &[]),
        Logged::start(&["scheduler"], &path, dir.path().join("scheduler.log"), &[]),
    ];
    for url in [worker_ops, scheduler_ops].map(|p| format!("http://127.0.0.1:{p}/healthz")) {
        until(&url, "alive", |status, _| status == 200).await;
    }
    // Each is in its wait (it listens for SIGTERM from before its first
    // try).
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &processes {
        while !p.log().contains("waiting for Redis at") {
            assert!(Instant::now() < deadline, "not waiting:\n{}", p.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for p in &mut processes {
        p.signal(libc::SIGTERM);
        let status = p.exit_within(Duration::from_secs(30)).await;
        let log = p.log();
        assert!(status.success(), "{status}:\n{log}");
        assert!(log.contains("stopped before Redis at"), "{log}");
    }
}

/// A stop that comes while `runner serve` still starts (here, while it
/// compiles a Python task's module, once Redis answered) ends it once
/// started, successfully. Before, the signal listeners lived only while a
/// stop was awaited: this one was dropped, and the process ran on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_starting_is_kept() {
    let port = free_port();
    let dir = TempDir::new().unwrap();
    let module = dir.path().join("hello.wasm");
    std::fs::write(&module, crate::python::python_task("examples/python/hello")).unwrap();
    let text = format!(
        "[broker]\nredis_url = {}\n\n[tasks.pyhello]\nmodule = {}\n",
        toml_str(&format!("redis://127.0.0.1:{port}/")),
        toml_str(module.to_str().unwrap()),
    );
    let path = write_config(&dir, &text);
    let api = format!("127.0.0.1:{}", free_port());
    let mut serve = Logged::start(
        &["serve", "--listen", &api, "--no-cache"],
        &path,
        dir.path().join("api.log"),
        &[(
            "RUNNER_ADMIN_TOKENS",
            "ops-admin-token-0123456789".to_string(),
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serve.log().contains("waiting for Redis at") {
        assert!(Instant::now() < deadline, "not waiting:\n{}", serve.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _redis = RedisServer::start_on(port);
    while !serve.log().contains(" answers") {
        assert!(Instant::now() < deadline, "no answer:\n{}", serve.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // It now compiles the module (seconds, without a cache).
    serve.signal(libc::SIGTERM);
    let status = serve.exit_within(Duration::from_secs(120)).await;
    assert!(status.success(), "{status}:\n{}", serve.log());
}

/// The metrics of `docs/metrics.md`: (name, type).
pub(crate) fn documented_metrics() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    docs.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let mut cells = l.split('|');
            let name = cells.next()?.trim().trim_end_matches('`').to_string();
            let kind = cells.next()?.trim().to_string();
            Some((name, kind))
        })
        .collect()
}

/// Whether some scrape in `bodies` has a sample of `name` (a `kind` of
/// docs/metrics.md) that moved: a counter or gauge above zero, a histogram
/// with observations.
pub(crate) fn moved(bodies: &[String], name: &str, kind: &str) -> bool {
    let series = if kind == "histogram" {
        format!("{name}_count")
    } else {
        name.to_string()
    };
    bodies
        .iter()
        .flat_map(|b| b.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .any(|(s, v)| {
            (s == series || s.starts_with(&format!("{series}{{")))
                && v.parse::<f64>().is_ok_and(|v| v > 0.0)
        })
}

/// Every metric the code records is in `docs/metrics.md`, and every metric
/// there is recorded somewhere.
#[test]
fn docs_list_exactly_the_metrics_the_code_records() {
    use std::collections::BTreeSet;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut recorded = BTreeSet::new();
    let files = [root.join("src"), root.join("../host-fns/src")]
        .iter()
        .flat_map(|d| crate::support::files_in(d))
        .collect::<Vec<_>>();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for macro_ in ["counter!(", "histogram!(", "gauge!("] {
            for (at, _) in text.match_indices(&format!("metrics::{macro_}")) {
                let rest = &text[at..];
                let name = rest.split('"').nth(1).unwrap_or_else(|| {
                    panic!("{}: a metric without a literal name", file.display())
                });
                recorded.insert(name.to_string());
            }
        }
    }
    let documented: BTreeSet<String> = documented_metrics().into_iter().map(|(n, _)| n).collect();
    assert!(recorded.len() >= 10, "{recorded:?}");
    assert_eq!(recorded, documented);
}

/// `deploy/grafana-dashboard.json` is a dashboard whose every query uses
/// metrics of `docs/metrics.md` (histograms through their `_bucket`s), and
/// every documented metric has a panel.
#[test]
fn the_grafana_dashboard_uses_the_documented_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let documented = documented_metrics();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10);
    for e in &exprs {
        let used: Vec<&str> = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("runner_"))
            .collect();
        assert!(!used.is_empty(), "{e}");
        for m in used {
            let known = documented.iter().any(|(name, kind)| {
                m == name || (kind == "histogram" && m == format!("{name}_bucket"))
            });
            assert!(known, "{m} in `{e}` is not in docs/metrics.md");
        }
    }
    for (name, _) in &documented {
        assert!(
            exprs.iter().any(|e| e.contains(name.as_str())),
            "no panel shows {name}"
        );
    }
    // Every process reports the whole broker's queue depths: a sum over
    // processes would count each job once per process.
    for e in exprs.iter().filter(|e| e.contains("runner_queue_jobs")) {
        assert!(
            e.starts_with("max by"),
            "`{e}` adds up one figure per process"
        );
    }
}

/// Failed Redis commands are counted by command (a script by its name) and
/// by kind: a script's own error, a command the ACL user lacks, a server
/// that is gone. A script's first run (`NOSCRIPT`, then `SCRIPT LOAD`) is
/// not an error.
#[test]
fn redis_command_errors_are_counted_by_command_and_kind() {
    use redis::AsyncCommands;
    use runner_host_fns::redis_conn::Counted;

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut server = RedisServer::start_with_acl(&crate::redis_tls::runner_acl("counted"));
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let client = redis::Client::open(server.url_as("runner", "counted")).unwrap();
            let manager = client.get_connection_manager().await.unwrap();
            let fine = redis::Script::new("return 1");
            let boom = redis::Script::new("return redis.error_reply('ERR boom')");
            let mut conn = Counted::new(manager).with_scripts([("fine", &fine), ("boom", &boom)]);
            let one: i64 = fine.invoke_async(&mut conn).await.unwrap();
            assert_eq!(one, 1);
            assert!(boom.invoke_async::<_, ()>(&mut conn).await.is_err());
            // Not in the runner's ACL (deploy/redis-users.acl).
            let keys: redis::RedisResult<Vec<String>> = conn.keys("runner:*").await;
            assert!(keys.is_err());
            server.stop();
            let gone: redis::RedisResult<Option<String>> = conn.get("runner:x").await;
            assert!(gone.is_err());
        })
    });
    let text = handle.render();
    for series in [
        "runner_redis_errors_total{command=\"boom\",kind=\"other\"} 1",
        "runner_redis_errors_total{command=\"keys\",kind=\"denied\"} 1",
        "runner_redis_errors_total{command=\"get\",kind=\"connection\"} 1",
    ] {
        assert!(text.contains(series), "{series} in:\n{text}");
    }
    assert!(!text.contains("command=\"fine\""), "{text}");
    assert!(!text.contains("evalsha"), "{text}");
}

/// `runner bench queue --workers 1,2` drains its jobs with that many
/// `runner worker` processes and prints a line per step, after its own
/// worker's figures for a full queue and for jobs enqueued while it
/// drains (the figures themselves are not asserted: tests never assert
/// speed).
#[test]
fn bench_queue_drains_with_worker_processes() {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "bench",
            "queue",
            "--jobs",
            "300",
            "--single",
            "3",
            "--idle",
            "1s",
            "--workers",
            "1,2",
            "--no-celery",
        ])
        .output()
        .unwrap();
    let stdout = crate::support::ok_stdout(&out);
    for line in [
        "throughput, a full queue",
        "throughput, enqueued while the worker drains",
        "1 worker process:",
        "2 worker processes:",
        "per 10k jobs/s",
    ] {
        assert!(stdout.contains(line), "no {line:?} in {stdout}");
    }
    assert!(!stdout.contains("celery"), "{stdout}");
    // The bench's own Redis going away when it exits is not an outage.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("WARN"), "{stderr}");
}

/// `runner bench queue --cluster 3`: a local cluster of three masters, one
/// queue then eight, each line with its figures; on one queue one master
/// does nearly all the work (the others see heartbeats), on eight it is
/// shared. Queue events cross the cluster bus only with classic pub/sub.
#[test]
fn bench_queue_measures_a_local_cluster() {
    let bench = |pubsub: &str| {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(["bench", "queue", "--jobs", "400", "--cluster", "3"])
            .args(["--cluster-pubsub", pubsub])
            .output()
            .unwrap()
    };
    let bus = |stdout: &str| -> Vec<f64> {
        stdout
            .lines()
            .filter(|l| l.contains(" masters, "))
            .map(|l| {
                let figure = l
                    .split("  ")
                    .find(|part| part.ends_with(" bus messages per job"))
                    .unwrap_or_else(|| panic!("no bus messages in {l:?}"));
                figure.split(' ').next().unwrap().parse().unwrap()
            })
            .collect()
    };
    let classic = bench("classic");
    let stdout = crate::support::ok_stdout(&classic);
    let relayed = bus(&stdout);
    assert_eq!(relayed.len(), 3, "{stdout}");
    // Each message (one per enqueue call and per settle call) goes to the
    // two other masters.
    assert!(relayed.iter().all(|&b| b > 0.0), "{stdout}");

    let out = bench("sharded");
    let stdout = crate::support::ok_stdout(&out);
    assert_eq!(bus(&stdout), vec![0.0, 0.0, 0.0], "{stdout}");
    let busiest = |layout: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.contains(layout))
            .unwrap_or_else(|| panic!("no {layout:?} in {stdout}"));
        let rate: f64 = line
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no jobs/s in {line:?}"));
        assert!(rate > 0.0, "{line}");
        assert!(line.contains("commands per job"), "{line}");
        line.split("busiest master ")
            .nth(1)
            .and_then(|r| r.split('%').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no busiest share in {line:?}"))
    };
    assert!(busiest("3 masters, 1 queue:") >= 90.0, "{stdout}");
    assert!(busiest("3 masters, 8 queues:") < 90.0, "{stdout}");
    // One queue in 8 partitions spreads as 8 queues do.
    assert!(
        busiest("3 masters, 1 queue in 8 partitions:") < 90.0,
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("WARN"), "{stderr}");
}
