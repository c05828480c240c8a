//! Redis over TLS and as an ACL user: a `redis-server` that listens only on
//! a TLS port (`--port 0`), with a test CA, with and without client
//! certificates; and the ACL user of `deploy/redis-users.acl`, as which the
//! API, a worker and the scheduler (separate processes) all work.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runner::app::Core;
use runner::producer::EnqueueRequest;
use runner::queue::redis::{RedisTls, open_client_with};
use runner::queue::{Broker, Job, JobState, RedisBroker, RevokeOutcome};
use serde_json::json;
use tempfile::TempDir;

use crate::redis_support::free_port;
use crate::support::{guest, sandbox};
use crate::wiring::{ApiProc, beat_ran, start_deployment, toml_str};

/// A test CA, a server certificate for 127.0.0.1 signed by it, and a
/// client certificate signed by it, as PEM files in a temp dir.
pub(crate) struct Certs {
    dir: TempDir,
}

impl Certs {
    pub(crate) fn new() -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = TempDir::new().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "runner test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, sans) in [
            (
                "server",
                vec!["127.0.0.1".to_string(), "localhost".to_string()],
            ),
            ("client", vec!["runner-client".to_string()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Certs { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA only (a server that asks for no client certificate).
    fn ca_only(&self) -> RedisTls {
        RedisTls {
            ca: Some(self.path("ca.pem")),
            ..RedisTls::default()
        }
    }

    /// The CA and the client certificate (mutual TLS).
    pub(crate) fn mutual(&self) -> RedisTls {
        RedisTls {
            ca: Some(self.path("ca.pem")),
            cert: Some(self.path("client.pem")),
            key: Some(self.path("client.key")),
        }
    }
}

/// A `redis-server` listening only on a TLS port, killed when dropped.
pub(crate) struct TlsRedis {
    pub(crate) port: u16,
    child: Option<Child>,
    dir: TempDir,
    args: Vec<std::ffi::OsString>,
    admin: String,
    tls: RedisTls,
}

pub(crate) const ADMIN_PASSWORD: &str = "test-admin-password";

impl TlsRedis {
    /// `client_certs`: whether clients must show a certificate; `acl`: the
    /// users file (then the test's own connections are `admin`'s).
    fn start(certs: &Certs, client_certs: bool, acl: Option<&Path>) -> TlsRedis {
        Self::start_with(certs, client_certs, acl, false)
    }

    /// [`start`](Self::start), with an append-only file when `aof` (so
    /// that [`restart`](Self::restart) keeps everything).
    pub(crate) fn start_with(
        certs: &Certs,
        client_certs: bool,
        acl: Option<&Path>,
        aof: bool,
    ) -> TlsRedis {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
        for a in ["--port", "0", "--bind", "127.0.0.1", "--tls-port"] {
            push(&a);
        }
        push(&port.to_string());
        push(&"--tls-cert-file");
        push(&certs.path("server.pem"));
        push(&"--tls-key-file");
        push(&certs.path("server.key"));
        push(&"--tls-ca-cert-file");
        push(&certs.path("ca.pem"));
        push(&"--tls-auth-clients");
        push(&if client_certs { "yes" } else { "no" });
        push(&"--dir");
        push(&dir.path());
        push(&"--logfile");
        push(&dir.path().join("redis.log"));
        for a in ["--save", "", "--loglevel", "warning", "--appendonly"] {
            push(&a);
        }
        push(&if aof { "yes" } else { "no" });
        if aof {
            push(&"--appendfsync");
            push(&"always");
        }
        if let Some(acl) = acl {
            push(&"--aclfile");
            push(&acl);
        }
        let admin_auth = if acl.is_some() {
            format!("admin:{ADMIN_PASSWORD}@")
        } else {
            String::new()
        };
        let mut server = TlsRedis {
            port,
            child: None,
            dir,
            args,
            admin: format!("rediss://{admin_auth}127.0.0.1:{port}/0"),
            tls: certs.mutual(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let client = open_client_with(&self.admin, &self.tls).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "TLS redis-server did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it as an operator would (SIGTERM: the AOF is flushed).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on a pid we spawned.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Starts it again after [`stop`](Self::stop), on the same port and
    /// directory.
    pub(crate) fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.spawn();
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// `rediss://<auth>@127.0.0.1:<port>/0` (no `@` without `auth`).
    pub(crate) fn url(&self, auth: &str) -> String {
        let at = if auth.is_empty() { "" } else { "@" };
        format!("rediss://{auth}{at}127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A broker on `url` stores and reads a job back.
async fn round_trip(url: &str, tls: &RedisTls) -> anyhow::Result<()> {
    let broker = RedisBroker::connect_with(url, tls).await?;
    let job = Job::new("default", "{}", chrono::Utc::now());
    let id = broker.enqueue(vec![job]).await?[0].job.id;
    anyhow::ensure!(broker.get(id).await?.is_some(), "the job was not stored");
    Ok(())
}

/// `rediss://` with a CA file, with a client certificate when the server
/// asks for one; refused without the CA (the system's roots do not know
/// it) and without the certificate it asks for. Before, every `rediss://`
/// URL failed: the redis crate was built without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_ca_file_and_with_a_client_certificate() {
    let certs = Certs::new();

    let mutual = TlsRedis::start(&certs, true, None);
    round_trip(&mutual.url(""), &certs.mutual()).await.unwrap();
    let err = round_trip(&mutual.url(""), &certs.ca_only())
        .await
        .expect_err("a server that asks for a client certificate let one in without");
    assert!(!err.to_string().is_empty());
    round_trip(&mutual.url(""), &RedisTls::default())
        .await
        .expect_err("the system's roots accepted the test CA");

    let one_way = TlsRedis::start(&certs, false, None);
    round_trip(&one_way.url(""), &certs.ca_only())
        .await
        .unwrap();

    // TLS files with a plain URL are refused before connecting.
    let err = RedisBroker::connect_with(
        &format!("redis://runner:hunter2@127.0.0.1:{}/0", one_way.port),
        &certs.ca_only(),
    )
    .await
    .err()
    .expect("TLS files with redis://");
    let text = err.to_string();
    assert!(text.contains("not rediss://"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// A process whose Redis answers TLS with a certificate its CA does not
/// sign stops at once and says why: waiting cannot fix that. Before, it
/// took the refusal for a Redis not up yet and waited for ever (a systemd
/// unit stayed "activating").
#[test]
fn a_certificate_of_another_ca_stops_a_process_at_once() {
    let certs = Certs::new();
    let other = Certs::new();
    let server = TlsRedis::start(&certs, false, None);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "scheduler",
            "--redis",
            &server.url(""),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("RUNNER_REDIS_TLS_CA", other.path("ca.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still waiting after 20 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

/// The `user runner` line of `deploy/redis-users.acl`, with `password`.
pub(crate) fn runner_acl(password: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read_to_string(root.join("deploy/redis-users.acl")).unwrap();
    let runner = shipped
        .lines()
        .find(|l| l.starts_with("user runner "))
        .expect("deploy/redis-users.acl has a `user runner` line");
    assert!(runner.contains(">CHANGE_ME "), "{runner}");
    runner.replace(">CHANGE_ME ", &format!(">{password} "))
}

/// The shipped ACL file with `password` for `runner` and the test's admin
/// password for `default`, plus an `admin` user for the test's own
/// connections.
pub(crate) fn acl_file(dir: &Path, password: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read_to_string(root.join("deploy/redis-users.acl")).unwrap();
    let default = shipped
        .lines()
        .find(|l| l.starts_with("user default "))
        .expect("deploy/redis-users.acl has a `user default` line");
    assert!(default.contains(">CHANGE_ME_ADMIN "), "{default}");
    let text = format!(
        "{}\n{}\nuser admin on >{ADMIN_PASSWORD} ~* &* +@all\n",
        runner_acl(password),
        default.replace(">CHANGE_ME_ADMIN ", &format!(">{ADMIN_PASSWORD} "))
    );
    let path = dir.join("users.acl");
    std::fs::write(&path, text).unwrap();
    path
}

const TOKEN: &str = "tls-acl-admin-token-0123456789";

/// The ACL user documented in `deploy/redis-users.acl` (only the commands,
/// keys and channels the runner uses) over mutual TLS: `runner serve`,
/// `runner worker` and `runner scheduler`, each its own process, run jobs
/// (one with kv), fire a beat, revoke and list; no process shows the
/// password, not even when it is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_the_documented_rules_runs_everything() {
    let certs = Certs::new();
    let dir = TempDir::new().unwrap();
    let password = "runner-acl-password-4f1d";
    let acl = acl_file(dir.path(), password);
    let redis = TlsRedis::start(&certs, true, Some(&acl));
    let listen = format!("127.0.0.1:{}", free_port());
    let config_text = |password: &str| {
        format!(
            "[server]\nlisten = {}\n\n[auth]\nadmin = [{}]\n\n\
             [broker]\nredis_url = {}\ntls_ca = {}\ntls_cert = {}\ntls_key = {}\n\n\
             [host.kv]\n\n\
             [tasks.hello]\nmodule = {}\n\n\
             [tasks.guard]\nmodule = {}\n[tasks.guard.grants]\nkv = {{}}\n\n\
             [[beats]]\nname = \"tick\"\ntask = \"hello\"\nevery = \"1s\"\ninput = {{ name = \"beat\" }}\n",
            toml_str(&listen),
            toml_str(TOKEN),
            toml_str(&redis.url(&format!("runner:{password}"))),
            toml_str(certs.path("ca.pem").to_str().unwrap()),
            toml_str(certs.path("client.pem").to_str().unwrap()),
            toml_str(certs.path("client.key").to_str().unwrap()),
            toml_str(guest("hello").to_str().unwrap()),
            toml_str(guest("kv_guard").to_str().unwrap()),
        )
    };
    let deployed = start_deployment(&dir, &config_text(password));
    let config = &deployed.config;

    // Through the API process: bind-at-start, enqueue, long poll.
    let api = ApiProc::new(&listen, TOKEN);
    let job = tokio::task::block_in_place(|| api.run("hello", json!({ "name": "TLS" })));
    assert_eq!(job["state"], "SUCCESS", "{job}");
    let job = tokio::task::block_in_place(|| api.run("guard", json!({ "key": "once" })));
    assert_eq!(job["state"], "SUCCESS", "{job}");
    let (s, workers) =
        tokio::task::block_in_place(|| api.call(reqwest::Method::GET, "/v1/workers", None));
    assert_eq!(s, 200, "{workers}");
    assert!(workers.contains("\"queues\""), "{workers}");
    assert!(!workers.contains(password), "{workers}");

    // In this process too, as the same user: the scheduler process fired
    // the beat, and revoke, stats and replay are allowed.
    let core = Core::open(config, sandbox()).await.unwrap();
    let job = beat_ran(&core, "tick").await;
    assert_eq!(job.state, JobState::Success, "{job:?}");
    let parked = core
        .producer
        .enqueue(EnqueueRequest {
            queue: Some("parked".into()),
            countdown_secs: Some(3600.0),
            ..EnqueueRequest::task("hello", "{}")
        })
        .await
        .unwrap()
        .job
        .id;
    assert_eq!(
        core.broker.revoke(parked, false).await.unwrap(),
        RevokeOutcome::Revoked
    );
    assert!(!core.broker.queues().await.unwrap().is_empty());
    assert!(core.broker.replay("default", &[]).await.unwrap().is_empty());
    assert!(!core.broker.workers().await.unwrap().is_empty());

    // A wrong password: the process stops with an error that does not show it.
    let wrong = "wrong-password-a7c2e9";
    let bad_path = dir.path().join("bad.toml");
    std::fs::write(&bad_path, config_text(wrong)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["worker", "--config"])
        .arg(&bad_path)
        .env_remove("RUNNER_REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("runner:***@127.0.0.1"), "{stderr}");
    assert!(!stderr.contains(wrong), "{stderr}");
}

/// The `ACL SETUSER` line of `deploy/README.md` grants what the tested
/// `deploy/redis-users.acl` grants, word for word.
#[test]
fn the_documented_acl_command_matches_the_tested_acl_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = std::fs::read_to_string(root.join("deploy/redis-users.acl")).unwrap();
    let rules = file
        .lines()
        .find_map(|l| l.strip_prefix("user runner on >CHANGE_ME "))
        .expect("the runner user in deploy/redis-users.acl");
    let readme = std::fs::read_to_string(root.join("deploy/README.md")).unwrap();
    let documented = readme
        .lines()
        .find_map(|l| l.trim().strip_prefix("ACL SETUSER runner on >PASSWORD "))
        .expect("an ACL SETUSER line in deploy/README.md");
    assert_eq!(documented, rules);
}
