//! One wiring path for every process: `runner worker` and `runner
//! scheduler`, started as the separate processes of a deployment with one
//! `runner.toml`, read the file as `runner serve` and `runner dev` do
//! (`[worker]`, `[host.kv]` in the broker's Redis, `[queues.*]` rate limits,
//! `[broker] redis_url`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use runner::app::{self, Core};
use runner::config::Config;
use runner::producer::EnqueueRequest;
use runner::queue::{Job, JobId, JobState};
use tempfile::TempDir;

use crate::redis_support::RedisServer;
use crate::support::{guest, sandbox};

/// A TOML string literal.
pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

pub(crate) fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("runner.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `runner` subcommand as its own process, killed (SIGTERM, then
/// SIGKILL) when dropped.
pub(crate) struct Proc(Child);

impl Proc {
    pub(crate) fn start(args: &[&str], config: &Path) -> Proc {
        let child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("RUNNER_REDIS_URL")
            .env_remove("RUNNER_CONFIG")
            .env_remove("RUNNER_CACHE_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the runner binary");
        Proc(child)
    }

    /// Sends `signal` (`libc::SIGSTOP`, `SIGCONT`, ...) to the process.
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on a pid we spawned.
        unsafe {
            libc::kill(self.0.id() as i32, signal);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on a pid we spawned.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The three processes of a deployment on one `runner.toml`: `runner
/// serve`, `runner worker -c 2` and `runner scheduler`, stopped when
/// dropped; `config` is the file as this process reads it.
pub(crate) struct Deployment {
    pub(crate) config: Config,
    _procs: Vec<Proc>,
}

/// Writes `text` into `dir` as `runner.toml` and starts its processes.
pub(crate) fn start_deployment(dir: &TempDir, text: &str) -> Deployment {
    let path = write_config(dir, text);
    let mut config = Config::from_toml(text).unwrap();
    config.base_dir = dir.path().to_path_buf();
    Deployment {
        config,
        _procs: vec![
            Proc::start(&["serve"], &path),
            Proc::start(&["worker", "-c", "2"], &path),
            Proc::start(&["scheduler"], &path),
        ],
    }
}

/// A blocking client of the API of a `runner serve` process a test
/// started: each call retries until the process answers (60 s at most).
pub(crate) struct ApiProc {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl ApiProc {
    /// The API listening on `listen`, called with bearer `token`.
    pub(crate) fn new(listen: &str, token: &str) -> ApiProc {
        ApiProc {
            http: crate::support::blocking_http_client(),
            base: format!("http://{listen}"),
            token: token.to_string(),
        }
    }

    /// One call: the status and the body.
    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send() {
                Ok(r) => {
                    let status = r.status();
                    return (status, r.text().unwrap());
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "the API did not come up: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Enqueues a job of `task` (202) and long-polls it (60 s): the job.
    pub(crate) fn run(&self, task: &str, input: serde_json::Value) -> serde_json::Value {
        let (s, body) = self.call(
            reqwest::Method::POST,
            "/v1/jobs",
            Some(serde_json::json!({ "task": task, "input": input })),
        );
        assert_eq!(s, 202, "{body}");
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, body) = self.call(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}?wait=60s"),
            None,
        );
        assert_eq!(s, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Waits (30 s) until beat `name` fired (the scheduler process says so
/// through `core`), then for its job's end: the job.
pub(crate) async fn beat_ran(core: &Core, name: &str) -> Job {
    let deadline = Instant::now() + Duration::from_secs(30);
    let fired = loop {
        if let Some(last) = core.scheduler.get(name).await.unwrap().last_fire {
            break last.job;
        }
        assert!(Instant::now() < deadline, "the beat did not fire in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    core.broker
        .wait(fired, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap()
}

/// The config's tasks bound, as the API process would do at start-up.
async fn deploy(config: &Config) -> Core {
    let core = Core::open(config, sandbox()).await.unwrap();
    core.apply_tasks(config).await.unwrap();
    core
}

async fn finished(core: &Core, id: JobId) -> Job {
    let job = core
        .broker
        .wait(id, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("job {id} not found"));
    assert!(
        job.state.is_final(),
        "job {id} did not finish within 60 s: {:?} on queue {}",
        job.state,
        job.queue
    );
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiring_worker_without_q_consumes_the_queues_of_its_worker_section() {
    let redis = RedisServer::start();
    let dir = TempDir::new().unwrap();
    let text = format!(
        "[broker]\nredis_url = {}\n\n[worker]\nqueues = [\"email\"]\nconcurrency = 1\n\n\
         [tasks.hello]\nmodule = {}\nqueue = \"email\"\n",
        toml_str(&redis.url()),
        toml_str(guest("hello").to_str().unwrap()),
    );
    let path = write_config(&dir, &text);
    let config = Config::from_toml(&text).unwrap();
    let core = deploy(&config).await;
    let id = core
        .producer
        .enqueue(EnqueueRequest::task("hello", r#"{"name":"Ada"}"#))
        .await
        .unwrap()
        .job
        .id;

    let _worker = Proc::start(&["worker"], &path);
    let job = finished(&core, id).await;
    assert_eq!(job.state, JobState::Success, "{job:?}");
    assert_eq!(job.queue, "email");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiring_two_worker_processes_share_one_kv_guard_in_the_brokers_redis() {
    let redis = RedisServer::start();
    let dir = TempDir::new().unwrap();
    // `[host.kv]` names no Redis of its own: it lives in the broker's.
    let text = format!(
        "[broker]\nredis_url = {}\n\n[host.kv]\n\n\
         [tasks.guard]\nmodule = {}\n[tasks.guard.grants]\nkv = {{}}\n",
        toml_str(&redis.url()),
        toml_str(guest("kv_guard").to_str().unwrap()),
    );
    let path = write_config(&dir, &text);
    let config = Config::from_toml(&text).unwrap();
    let core = deploy(&config).await;

    // One job per worker process: each consumes its own queue.
    let _one = Proc::start(&["worker", "-Q", "one", "-c", "1"], &path);
    let _two = Proc::start(&["worker", "-Q", "two", "-c", "1"], &path);
    let mut ids = Vec::new();
    for queue in ["one", "two"] {
        let request = EnqueueRequest {
            queue: Some(queue.into()),
            ..EnqueueRequest::task("guard", r#"{"key": "remind:42:2026-12-02"}"#)
        };
        ids.push(core.producer.enqueue(request).await.unwrap().job.id);
    }
    let mut firsts = Vec::new();
    let mut workers = Vec::new();
    for id in ids {
        let job = finished(&core, id).await;
        assert_eq!(job.state, JobState::Success, "{job:?}");
        let out = job.result_value().unwrap();
        firsts.push(out["first"].as_bool().unwrap());
        workers.push(job.worker.clone().unwrap());
    }
    assert_ne!(workers[0], workers[1], "each job ran in its own process");
    firsts.sort();
    assert_eq!(
        firsts,
        [false, true],
        "exactly one of the two processes claims the key"
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("runner:kv:*")
        .query(&mut conn)
        .unwrap();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("runner:kv:{guard}:") && k.ends_with(":remind:42:2026-12-02")),
        "the guard is in the broker's Redis: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiring_a_beat_fired_by_runner_scheduler_carries_its_queues_rate_limit() {
    let redis = RedisServer::start();
    let dir = TempDir::new().unwrap();
    // The Redis URL only in the file's `[broker]`: no flag, no environment.
    let text = format!(
        "[broker]\nredis_url = {}\n\n[queues.slow]\nrate_limit = \"2/m\"\n\n\
         [tasks.hello]\nmodule = {}\nqueue = \"slow\"\n\n\
         [[beats]]\nname = \"tick\"\ntask = \"hello\"\nevery = \"1s\"\n",
        toml_str(&redis.url()),
        toml_str(guest("hello").to_str().unwrap()),
    );
    let path = write_config(&dir, &text);
    let config = Config::from_toml(&text).unwrap();
    let core = Arc::new(deploy(&config).await);

    let _scheduler = Proc::start(&["scheduler"], &path);
    let deadline = Instant::now() + Duration::from_secs(30);
    let fired = loop {
        let status = core.scheduler.get("tick").await.unwrap();
        if let Some(last) = status.last_fire {
            break last.job;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler process fired nothing in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let job = core.broker.get(fired).await.unwrap().unwrap();
    assert_eq!(job.queue, "slow");
    assert_eq!(job.schedule.as_deref(), Some("tick"));
    let limit = job
        .rate_limits
        .iter()
        .find(|l| l.key == "queue:slow")
        .unwrap_or_else(|| panic!("the queue's rate limit is missing: {:?}", job.rate_limits));
    assert_eq!((limit.count, limit.period_ms), (2, 60_000));
}

/// `app::worker_config`: flags over the file over the defaults.
#[test]
fn wiring_flags_override_the_file_which_overrides_the_defaults() {
    let config =
        Config::from_toml("[worker]\nqueues = [\"a\", \"b\"]\nconcurrency = 3\nlease = \"9s\"\n")
            .unwrap();
    let cfg = app::worker_config(&config).unwrap();
    assert_eq!(cfg.queues, ["a", "b"]);
    assert_eq!(cfg.concurrency, 3);
    assert_eq!(
        cfg.prefetch,
        runner::worker::Prefetch::Adaptive,
        "prefetch is adaptive unless set"
    );
    assert_eq!(cfg.lease, Duration::from_secs(9));
    assert_eq!(cfg.grace, Duration::from_secs(30), "the default");

    // `-Q` and `-c` of `runner worker` set the same keys.
    let cli = runner::cli::Cli::try_parse_from(["runner", "worker", "-Q", "c", "-c", "5"]).unwrap();
    let runner::cli::Command::Worker(args) = cli.command else {
        panic!("not the worker command");
    };
    let mut flagged = config.clone();
    args.apply(&mut flagged).unwrap();
    let cfg = app::worker_config(&flagged).unwrap();
    assert_eq!(cfg.queues, ["c"]);
    assert_eq!(cfg.concurrency, 5);
    assert_eq!(cfg.lease, Duration::from_secs(9), "from the file");

    let defaults = app::worker_config(&Config::default()).unwrap();
    assert_eq!(defaults.queues, ["default"]);

    let bad = Config::from_toml("[worker]\nlease = \"0s\"\n").unwrap_err();
    assert!(format!("{bad:#}").contains("worker.lease"), "{bad:#}");
}
