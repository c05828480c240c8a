//! The users' scenarios of `docs/scenarios.md` (repository root) end to
//! end, each on a deployment built the way production builds
//! it: a `runner.toml` text modelled on `examples/runner.toml` (its queues,
//! rate limits, retry policy, built-in tasks and beats), with `[broker]` on a
//! redis-server of the test's own, `[host.mail]` on a real SMTP server
//! (mailin-embedded), temp dirs as the files roots and a loopback HTTP
//! server standing in for the intranet endpoints and the webhooks. It is
//! loaded with `Config::from_toml`, then `Core::open` + `apply_tasks` (binds
//! `builtin:*`), one `app::worker` per worker process (each on its own
//! `Core`, as `runner worker` opens its own), the scheduler loop, and the
//! API on a loopback port, driven over HTTP with the `[auth]` tokens only.
//!
//! - reminder: the 09:00 Asia/Tokyo beat fired by API mails each eligible
//!   user once with the right Japanese subject; quiet hours, `none` and
//!   another weekday get none; a second fire the same day sends nothing.
//! - report: the daily and monthly beats fired by API save a PDF that
//!   `pdftotext` reads and mail it, byte-identical, as an attachment.
//! - cleanup: the nightly beat fired by API deletes exactly the old files.
//! - notify: 40 notifications at once on the `notifications` queue (`30/m`)
//!   consumed by two workers: 30 delivered, 10 delayed into the next window.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, Uri};
use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use mail_parser::MimeHeaders;
use reqwest::StatusCode;
use runner::app::{self, Core};
use runner::config::Config;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;

use crate::builtin_tasks::{Inbox, file_aged, pdftotext, remaining, toml_str};
use crate::redis_support::RedisServer;
use crate::support::sandbox;

const ADMIN: &str = "scenario-admin-token-0123456789";
const SUBMIT: &str = "scenario-submit-token-0123456789";

// ---------------------------------------------------------------- intranet

/// One request as the loopback server received it.
#[derive(Debug, Clone)]
struct Hit {
    method: Method,
    uri: String,
    body: Bytes,
    at: DateTime<Utc>,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of {} is not JSON ({e}): {}",
                self.uri,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

type Answer = Arc<dyn Fn(&Uri) -> Value + Send + Sync>;

/// The intranet and the webhooks: records every request and answers a
/// path with what `answer` computes at that moment (200 `{}` otherwise),
/// `delay_ms` (a query parameter) late.
#[derive(Clone)]
struct Intranet {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Intranet {
    async fn start(answer: impl Fn(&Uri) -> Value + Send + Sync + 'static) -> Intranet {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let recorded = hits.clone();
        let answer: Answer = Arc::new(answer);
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let recorded = recorded.clone();
            let answer = answer.clone();
            async move {
                // `delay_ms=N` in the query: a slow intranet.
                let delay = uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
                    .and_then(|ms| ms.parse().ok());
                if let Some(ms) = delay {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let value = answer(&uri);
                recorded.lock().unwrap().push(Hit {
                    method,
                    uri: uri.to_string(),
                    body,
                    at: Utc::now(),
                });
                axum::Json(value)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Intranet { addr, hits }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- runner.toml

/// What differs between test deployments.
struct Site<'a> {
    redis: &'a RedisServer,
    smtp_port: u16,
    intranet: &'a Intranet,
    logs: &'a Path,
    reports: &'a Path,
}

/// The back-office deployment of `examples/runner.toml`, pointed at the
/// test's Redis, SMTP server, loopback intranet and temp dirs.
fn runner_toml(site: &Site) -> String {
    let intranet = site.intranet.base();
    let http_grant = format!(
        "http = {{ allow = [{}], private_networks = [\"127.0.0.1/32\"] }}",
        toml_str(&intranet)
    );
    let retry = "retry = { max_retries = 3, backoff_base_ms = 60000, backoff_cap_ms = 600000, jitter = true }";
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body = "64MiB"
open = false

[auth]
admin = ["{ADMIN}"]
submit = ["{SUBMIT}"]

[broker]
redis_url = {redis}

[worker]
queues = ["default", "email", "notifications", "reports", "verification", "maintenance"]
concurrency = 4

[queues.default]
[queues.email]
rate_limit = "10/m"
[queues.notifications]
rate_limit = "30/m"
[queues.reports]
[queues.verification]
[queues.maintenance]

[host.files.roots]
reports = {reports}
logs = {logs}

[host.kv]
prefix = "runner:kv"

[host.mail]
host = "127.0.0.1"
port = {smtp}
tls = "none"
from = {{ email = "noreply@example.com", name = "業務システム" }}
reply_to = {{ email = "support@example.com", name = "サポート窓口" }}
return_path = "bounces@example.com"

[host.http]
[host.pdf]

[tasks.reminder]
module = "builtin:reminder"
queue = "email"
time_limit = "120s"
memory = "64MiB"
result_ttl = "24h"
{retry}
[tasks.reminder.grants]
kv = {{ max_keys = 10000 }}
mail = {{ allowed_senders = ["*@example.com"] }}
{http_grant}

[tasks.report]
module = "builtin:report"
queue = "reports"
time_limit = "300s"
memory = "128MiB"
result_ttl = "24h"
{retry}
[tasks.report.grants]
pdf = true
files = {{ reports = "read-write" }}
mail = {{ allowed_senders = ["*@example.com"] }}
{http_grant}

[tasks.cleanup]
module = "builtin:cleanup"
queue = "maintenance"
time_limit = "600s"
result_ttl = "24h"
{retry}
[tasks.cleanup.grants]
files = {{ logs = "read-write", reports = "read-write" }}
{http_grant}

[tasks.notify]
module = "builtin:notify"
queue = "notifications"
time_limit = "30s"
result_ttl = "24h"
{retry}
[tasks.notify.grants]
{http_grant}

[[beats]]
name = "daily-progress-reminder"
task = "reminder"
cron = "0 9 * * *"
timezone = "Asia/Tokyo"
input = {{ source = {open_items}, timezone = "Asia/Tokyo", link = "https://intranet.example.com/progress" }}

[[beats]]
name = "daily-report"
task = "report"
cron = "0 7 * * *"
timezone = "Asia/Tokyo"
missed = "catch-up-once"
input = {{ kind = "daily", timezone = "Asia/Tokyo", title = "日次業務レポート", source = {daily}, recipients = ["管理部 <kanri@example.com>"] }}

[[beats]]
name = "monthly-report"
task = "report"
cron = "0 8 1 * *"
timezone = "Asia/Tokyo"
missed = "catch-up-once"
input = {{ kind = "monthly", timezone = "Asia/Tokyo", title = "月次業務レポート", source = {monthly}, recipients = ["管理部 <kanri@example.com>", "経理部 <keiri@example.com>"] }}

[[beats]]
name = "nightly-cleanup"
task = "cleanup"
cron = "30 3 * * *"
timezone = "Asia/Tokyo"
[beats.input]
# Every filesystem has less than 100% free: the alert is always due here.
alert_below = "100%"
webhook = {alert}
webhook_kind = "teams"
[[beats.input.rules]]
root = "logs"
glob = "**/*.log"
older_than_days = 14
[[beats.input.rules]]
root = "logs"
glob = "**/*.log.gz"
older_than_days = 90
[[beats.input.rules]]
root = "reports"
glob = "daily/*.pdf"
older_than_days = 90
"#,
        redis = toml_str(&site.redis.url()),
        reports = toml_str(site.reports.to_str().unwrap()),
        logs = toml_str(site.logs.to_str().unwrap()),
        smtp = site.smtp_port,
        open_items = toml_str(&site.intranet.url("/api/open-items")),
        daily = toml_str(&site.intranet.url("/api/reports/daily?date={period}")),
        monthly = toml_str(&site.intranet.url("/api/reports/monthly?month={period}")),
        alert = toml_str(&site.intranet.url("/webhookb2/alerts")),
    )
}

// ---------------------------------------------------------------- deployment

/// The API, `workers` worker processes and the scheduler, in this process.
struct Deployment {
    url: String,
    http: reqwest::Client,
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Deployment {
    async fn start(toml_text: &str, workers: usize) -> Deployment {
        let config = Config::from_toml(toml_text).unwrap_or_else(|e| panic!("runner.toml: {e:#}"));
        // One sandbox (engine and compiled modules) for the test process;
        // everything else (Redis connections, producer, limits) per process.
        let sandbox = sandbox();
        let core = Core::open(&config, sandbox.clone()).await.unwrap();
        let mut bound = core.apply_tasks(&config).await.unwrap();
        bound.sort();
        assert_eq!(bound, ["cleanup", "notify", "reminder", "report"]);

        let (stop, rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut handles = Vec::new();
        for _ in 0..workers {
            let worker_core = Core::open(&config, sandbox.clone()).await.unwrap();
            let services = app::host_services(&config).await.unwrap();
            let w = worker_core.worker(&config, services).unwrap();
            let f = stopped(rx.clone());
            handles.push(tokio::spawn(async move {
                w.run(f).await.unwrap();
            }));
        }
        let sched = core.scheduler.clone();
        let f = stopped(rx.clone());
        handles.push(tokio::spawn(async move { sched.run(f).await }));

        let auth = app::auth_from(&config).unwrap();
        let ctx = app::api_context(&core, &config, auth).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let f = stopped(rx.clone());
        handles.push(tokio::spawn(async move {
            runner::api::serve(listener, ctx, f).await.unwrap();
        }));
        Deployment {
            url,
            http: crate::support::http_client(),
            stop,
            handles,
        }
    }

    /// The API of a deployment running elsewhere (other processes): the
    /// same calls, nothing to stop.
    fn remote(url: String) -> Deployment {
        Deployment {
            url,
            http: crate::support::http_client(),
            stop: watch::channel(false).0,
            handles: Vec::new(),
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let res = rb.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `POST /v1/schedules/<beat>/fire` with the admin token: the job.
    async fn fire(&self, beat: &str) -> Value {
        // Firing needs the admin token, not the submit one.
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/schedules/{beat}/fire"),
                SUBMIT,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/schedules/{beat}/fire"),
                ADMIN,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        assert_eq!(v["schedule"], beat, "{v}");
        v
    }

    /// `POST /v1/jobs` with the submit token, accepted: the job.
    async fn submit(&self, body: Value) -> Value {
        let (s, v) = self
            .call(reqwest::Method::POST, "/v1/jobs", SUBMIT, Some(body))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        v
    }

    /// The job once it is final (long-polls of up to a minute; a job that
    /// is still not final after three is returned as it is).
    async fn finished(&self, id: &str) -> Value {
        let mut job = Value::Null;
        for _ in 0..3 {
            let (s, v) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/jobs/{id}?wait=60s"),
                    SUBMIT,
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            job = v;
            if ["SUCCESS", "FAILURE", "REVOKED", "EXPIRED"]
                .contains(&job["state"].as_str().unwrap_or(""))
            {
                break;
            }
        }
        job
    }

    async fn job(&self, id: &str) -> Value {
        let (s, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/jobs/{id}"),
                SUBMIT,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// The job of `beat`'s next fire by its schedule (not by hand), once
    /// it succeeded: (its result, the job).
    async fn cron_fired(&self, beat: &str) -> (Value, Value) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (s, v) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/schedules/{beat}"),
                    SUBMIT,
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if let Some(id) = v["last_fire"]["job"].as_str() {
                assert_eq!(v["last_fire"]["manual"], false, "{v}");
                let job = self.finished(id).await;
                assert_eq!(job["state"], "SUCCESS", "{job}");
                assert_eq!(job["schedule"], beat, "{job}");
                return (job["result"].clone(), job);
            }
            assert!(Instant::now() < deadline, "{beat} did not fire: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A beat's fire, waited for: its result.
    async fn fire_and_finish(&self, beat: &str) -> (Value, Value) {
        let fired = self.fire(beat).await;
        let job = self.finished(fired["id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "SUCCESS", "{job}");
        assert_eq!(job["schedule"], beat, "{job}");
        (job["result"].clone(), job)
    }
}

/// The pieces every scenario starts: Redis, SMTP, intranet, temp roots.
struct Stage {
    redis: RedisServer,
    inbox: Inbox,
    smtp_port: u16,
    intranet: Intranet,
    dir: TempDir,
}

impl Stage {
    async fn new(answer: impl Fn(&Uri) -> Value + Send + Sync + 'static) -> Stage {
        let (inbox, smtp_port) = Inbox::start();
        let dir = TempDir::new().unwrap();
        for root in ["logs", "reports"] {
            std::fs::create_dir_all(dir.path().join(root)).unwrap();
        }
        Stage {
            redis: RedisServer::start(),
            inbox,
            smtp_port,
            intranet: Intranet::start(answer).await,
            dir,
        }
    }

    fn logs(&self) -> std::path::PathBuf {
        self.dir.path().join("logs")
    }

    fn reports(&self) -> std::path::PathBuf {
        self.dir.path().join("reports")
    }

    async fn deploy(&self, workers: usize) -> Deployment {
        let (logs, reports) = (self.logs(), self.reports());
        let text = runner_toml(&Site {
            redis: &self.redis,
            smtp_port: self.smtp_port,
            intranet: &self.intranet,
            logs: &logs,
            reports: &reports,
        });
        Deployment::start(&text, workers).await
    }
}

fn redis_conn(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

// ---------------------------------------------------------------- reminder

const TOKYO: Tz = chrono_tz::Asia::Tokyo;
const NEW_YORK: Tz = chrono_tz::America::New_York;

/// `HH:MM-HH:MM` in Tokyo from `from` to `to` minutes after `now`.
fn tokyo_range(now: DateTime<Utc>, from: i64, to: i64) -> String {
    let t = |m: i64| {
        (now + chrono::Duration::minutes(m))
            .with_timezone(&TOKYO)
            .format("%H:%M")
            .to_string()
    };
    format!("{}-{}", t(from), t(to))
}

/// The open items as the intranet answers them at `now`: one user per way
/// the reminder decides, with quiet hours and weekdays taken relative to
/// the real clock (the beat runs on it).
fn open_items(now: DateTime<Utc>) -> Value {
    let today = now.with_timezone(&TOKYO).weekday();
    let weekday = |d: chrono::Weekday| d.to_string().to_lowercase();
    json!({ "users": [
        { "id": 1, "email": "taro@example.com", "name": "山田 太郎", "timezone": "Asia/Tokyo",
          "frequency": "daily", "quiet_hours": tokyo_range(now, 120, 180),
          "items": [ { "title": "見積書の作成", "due": "2026-11-25" }, "議事録の共有" ] },
        { "id": 2, "email": "ken@example.com", "name": "佐藤 健", "timezone": "Asia/Tokyo",
          "frequency": "none", "items": ["経費精算"] },
        { "id": 3, "email": "hana@example.com", "name": "鈴木 花子", "timezone": "Asia/Tokyo",
          "frequency": "daily", "quiet_hours": tokyo_range(now, -60, 60), "items": ["日報"] },
        { "id": 4, "email": "yuki@example.com", "name": "高橋 由紀", "timezone": "Asia/Tokyo",
          "frequency": "weekly", "weekday": weekday(today), "items": ["週報"] },
        { "id": 5, "email": "jiro@example.com", "name": "田中 次郎", "timezone": "Asia/Tokyo",
          "frequency": "weekly", "weekday": weekday(today.succ()), "items": ["週報"] },
        { "id": 6, "email": "jane@example.com", "name": "Jane Doe", "timezone": "America/New_York",
          "frequency": "daily", "items": ["Q4 plan"] },
    ] })
}

/// `user -> status or skip reason`.
fn decisions(result: &Value) -> BTreeMap<String, String> {
    result["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {result}"))
        .iter()
        .map(|u| {
            let what = u["reason"].as_str().or(u["status"].as_str()).unwrap();
            (u["user"].as_str().unwrap().to_owned(), what.to_owned())
        })
        .collect()
}

fn japanese_date(d: NaiveDate) -> String {
    format!("{}年{:02}月{:02}日", d.year(), d.month(), d.day())
}

fn owned(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_reminder_beat_mails_each_eligible_user_once_a_day() {
    let stage = Stage::new(|uri| {
        if uri.path() == "/api/open-items" {
            open_items(Utc::now())
        } else {
            json!({})
        }
    })
    .await;
    let deployment = stage.deploy(1).await;

    // The beat is the 09:00 Asia/Tokyo one of runner.toml: 00:00 UTC.
    let (s, beat) = deployment
        .call(
            reqwest::Method::GET,
            "/v1/schedules/daily-progress-reminder",
            SUBMIT,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{beat}");
    let next: DateTime<Utc> = serde_json::from_value(beat["next_fire"]["utc"].clone()).unwrap();
    assert_eq!(next.format("%H:%M:%S").to_string(), "00:00:00", "{beat}");
    assert!(
        beat["next_fire"]["local"]
            .as_str()
            .unwrap()
            .contains("T09:00:00+09:00"),
        "{beat}"
    );

    let (first, job) = deployment.fire_and_finish("daily-progress-reminder").await;
    assert_eq!(job["queue"], "email", "{job}");
    let now: DateTime<Utc> = first["now"].as_str().unwrap().parse().unwrap();
    let tokyo_day = now.with_timezone(&TOKYO).date_naive();
    let new_york_day = now.with_timezone(&NEW_YORK).date_naive();
    assert_eq!(
        decisions(&first),
        owned(&[
            ("1", "sent"),
            ("2", "frequency_none"),
            ("3", "quiet_hours"),
            ("4", "sent"),
            ("5", "not_today"),
            ("6", "sent"),
        ]),
        "{first}"
    );
    assert_eq!(
        (first["sent"].as_u64(), first["skipped"].as_u64()),
        (Some(3), Some(3)),
        "{first}"
    );
    let fetched = stage.intranet.hits();
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(
        (fetched[0].method.clone(), fetched[0].uri.as_str()),
        (Method::GET, "/api/open-items")
    );

    // Exactly one mail per eligible user, its subject (RFC 2047 on the
    // wire) naming the user's local day.
    let mut mails: Vec<(String, String, String, String)> = stage
        .inbox
        .parsed()
        .into_iter()
        .map(|(received, m)| {
            assert_eq!(received.rcpt_to.len(), 1, "{received:?}");
            let raw = String::from_utf8_lossy(&received.data).to_lowercase();
            assert!(
                raw.contains("subject: =?utf-8?"),
                "the subject is not RFC 2047-encoded:\n{raw}"
            );
            let from = m.from().and_then(|a| a.first()).expect("From");
            assert_eq!(
                (from.name(), from.address()),
                (Some("業務システム"), Some("noreply@example.com"))
            );
            let reply_to = m.reply_to().and_then(|a| a.first()).expect("Reply-To");
            assert_eq!(reply_to.address(), Some("support@example.com"));
            let to = m.to().and_then(|a| a.first()).expect("To");
            (
                received.rcpt_to[0].clone(),
                to.name().unwrap_or_default().to_owned(),
                m.subject().unwrap_or_default().to_owned(),
                m.body_text(0).unwrap_or_default().into_owned(),
            )
        })
        .collect();
    mails.sort();
    let summary: Vec<(String, String, String)> = mails
        .iter()
        .map(|(to, name, subject, _)| (to.clone(), name.clone(), subject.clone()))
        .collect();
    let row = |to: &str, name: &str, subject: String| (to.to_owned(), name.to_owned(), subject);
    assert_eq!(
        summary,
        [
            row(
                "jane@example.com",
                "Jane Doe",
                format!("本日の進捗リマインダー（{}）", japanese_date(new_york_day))
            ),
            row(
                "taro@example.com",
                "山田 太郎",
                format!("本日の進捗リマインダー（{}）", japanese_date(tokyo_day))
            ),
            row(
                "yuki@example.com",
                "高橋 由紀",
                format!("今週の進捗リマインダー（{}）", japanese_date(tokyo_day))
            ),
        ]
    );
    let taro = &mails[1].3;
    for expected in [
        "山田 太郎 さん",
        "・見積書の作成（期限: 2026-11-25）",
        "・議事録の共有",
        "https://intranet.example.com/progress",
    ] {
        assert!(taro.contains(expected), "{expected:?} not in:\n{taro}");
    }

    // The once-a-day guard lives in the broker's Redis, one key per mailed
    // user and local day, expiring within 24 h.
    let mut conn = redis_conn(&stage.redis);
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("runner:kv*remind:*")
        .query(&mut conn)
        .unwrap();
    keys.sort();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for (key, (user, day)) in
        keys.iter()
            .zip([("1", tokyo_day), ("4", tokyo_day), ("6", new_york_day)])
    {
        assert!(key.ends_with(&format!("remind:{user}:{day}")), "{keys:?}");
        let ttl: i64 = redis::cmd("TTL").arg(key).query(&mut conn).unwrap();
        assert!(ttl > 0 && ttl <= 24 * 3600, "{key}: TTL {ttl}");
    }

    // A second fire the same day sends nothing.
    let (second, _) = deployment.fire_and_finish("daily-progress-reminder").await;
    let now2: DateTime<Utc> = second["now"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        now2.with_timezone(&TOKYO).date_naive(),
        tokyo_day,
        "the test crossed midnight in Tokyo"
    );
    assert_eq!(second["sent"], 0, "{second}");
    assert_eq!(
        decisions(&second),
        owned(&[
            ("1", "already_sent"),
            ("2", "frequency_none"),
            ("3", "quiet_hours"),
            ("4", "already_sent"),
            ("5", "not_today"),
            ("6", "already_sent"),
        ]),
        "{second}"
    );
    assert_eq!(
        stage.inbox.messages().len(),
        3,
        "no mail on the second fire"
    );
    assert_eq!(stage.intranet.hits().len(), 2);

    // The beat's status names the last (manual) fire and its job.
    let (_, beat) = deployment
        .call(
            reqwest::Method::GET,
            "/v1/schedules/daily-progress-reminder",
            SUBMIT,
            None,
        )
        .await;
    assert_eq!(beat["last_fire"]["manual"], true, "{beat}");
    deployment.stop().await;
}

// ---------------------------------------------------------------- report

fn report_figures(uri: &Uri) -> Value {
    match uri.path() {
        "/api/reports/daily" => json!({
            "summary": { "処理件数": 128, "失敗": 2 },
            "tables": [ { "heading": "部署別", "columns": ["部署", "件数"],
                          "rows": [["営業部", 80], ["経理部", 48]] } ],
            "notes": "失敗した 2 件は翌日に再処理します。"
        }),
        "/api/reports/monthly" => json!({
            "summary": { "請求書": 31 },
            "tables": [ { "heading": "取引先別", "columns": ["取引先", "金額"],
                          "rows": [["株式会社サンプル", "1,200,000"]] } ]
        }),
        _ => json!({}),
    }
}

/// The one mail to `rcpts`, carrying `pdf` intact as `name`.
fn assert_mailed(
    inbox: &Inbox,
    index: usize,
    rcpts: &[&str],
    subject: &str,
    name: &str,
    pdf: &[u8],
) {
    let mails = inbox.parsed();
    let (received, mail) = &mails[index];
    let mut to = received.rcpt_to.clone();
    to.sort();
    assert_eq!(to, rcpts);
    assert_eq!(mail.subject(), Some(subject));
    let attachments: Vec<_> = mail.attachments().collect();
    assert_eq!(attachments.len(), 1, "{subject}");
    assert_eq!(attachments[0].attachment_name(), Some(name));
    assert_eq!(
        attachments[0]
            .content_type()
            .map(|c| (c.ctype(), c.subtype())),
        Some(("application", Some("pdf")))
    );
    assert!(
        attachments[0].contents() == pdf,
        "{subject}: the attachment is not the saved PDF"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_report_beats_save_a_readable_pdf_and_mail_it() {
    let stage = Stage::new(report_figures).await;
    let deployment = stage.deploy(1).await;

    // Daily: the period is the fire's day in Tokyo.
    let (out, job) = deployment.fire_and_finish("daily-report").await;
    assert_eq!(job["queue"], "reports", "{job}");
    let due: DateTime<Utc> = serde_json::from_value(job["scheduled_for"].clone()).unwrap();
    let day = due.with_timezone(&TOKYO).date_naive().to_string();
    assert_eq!(out["path"], format!("daily/{day}.pdf"), "{out}");
    let daily_path = stage.reports().join(format!("daily/{day}.pdf"));
    let daily = std::fs::read(&daily_path).expect("the daily PDF in the reports root");
    assert!(daily.starts_with(b"%PDF-"));
    assert_eq!(out["bytes"].as_u64(), Some(daily.len() as u64), "{out}");
    let text = pdftotext(&daily_path);
    for expected in [
        "日次業務レポート",
        &day,
        "処理件数",
        "128",
        "部署別",
        "営業部",
        "経理部",
        "48",
        "失敗した 2 件は翌日に再処理します。",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let hits = stage.intranet.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].uri, format!("/api/reports/daily?date={day}"));
    assert_eq!(stage.inbox.messages().len(), 1);
    assert_mailed(
        &stage.inbox,
        0,
        &["kanri@example.com"],
        &format!("日次業務レポート（{day}）"),
        &format!("{day}.pdf"),
        &daily,
    );

    // Monthly: the month before the fire, in Tokyo.
    let (out, job) = deployment.fire_and_finish("monthly-report").await;
    let due: DateTime<Utc> = serde_json::from_value(job["scheduled_for"].clone()).unwrap();
    let local = due.with_timezone(&TOKYO).date_naive();
    let (y, m) = if local.month() == 1 {
        (local.year() - 1, 12)
    } else {
        (local.year(), local.month() - 1)
    };
    let month = format!("{y}-{m:02}");
    assert_eq!(out["path"], format!("monthly/{month}.pdf"), "{out}");
    let monthly_path = stage.reports().join(format!("monthly/{month}.pdf"));
    let monthly = std::fs::read(&monthly_path).expect("the monthly PDF in the reports root");
    let text = pdftotext(&monthly_path);
    for expected in [
        "月次業務レポート",
        &month,
        "請求書",
        "31",
        "取引先別",
        "株式会社サンプル",
        "1,200,000",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    assert_eq!(
        stage.intranet.hits()[1].uri,
        format!("/api/reports/monthly?month={month}")
    );
    assert_eq!(stage.inbox.messages().len(), 2);
    assert_mailed(
        &stage.inbox,
        1,
        &["kanri@example.com", "keiri@example.com"],
        &format!("月次業務レポート（{month}）"),
        &format!("{month}.pdf"),
        &monthly,
    );
    // The daily one is still there, untouched.
    assert_eq!(std::fs::read(&daily_path).unwrap(), daily);
    deployment.stop().await;
}

// ---------------------------------------------------------------- cleanup

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_cleanup_beat_deletes_exactly_the_old_files() {
    let stage = Stage::new(|_| json!({})).await;
    let (logs, reports) = (stage.logs(), stage.reports());
    // The beat's rules: logs **/*.log after 14 days, **/*.log.gz after 90,
    // reports daily/*.pdf after 90.
    for (name, days) in [
        ("app.log", 30),               // old log
        ("worker/2026-10-01.log", 15), // old log, in a subdirectory
        ("worker/today.log", 0),
        ("recent.log", 13),
        ("archive/2026-01.log.gz", 120), // old archive
        ("archive/2026-09.log.gz", 60),
        ("keep.txt", 400), // matches no glob
    ] {
        file_aged(&logs, name, days);
    }
    for (name, days) in [
        ("daily/2026-07-01.pdf", 120), // old daily report
        ("daily/2026-11-20.pdf", 2),
        ("monthly/2025-01.pdf", 400), // monthly reports are kept
    ] {
        file_aged(&reports, name, days);
    }
    let deployment = stage.deploy(1).await;

    let (out, job) = deployment.fire_and_finish("nightly-cleanup").await;
    assert_eq!(job["queue"], "maintenance", "{job}");
    assert_eq!(
        remaining(&logs),
        [
            "archive/2026-09.log.gz",
            "keep.txt",
            "recent.log",
            "worker/today.log"
        ]
    );
    assert_eq!(
        remaining(&reports),
        ["daily/2026-11-20.pdf", "monthly/2025-01.pdf"]
    );
    assert_eq!(
        (out["files_deleted"].as_u64(), out["bytes_freed"].as_u64()),
        (Some(4), Some(40)),
        "{out}"
    );
    let deleted: Vec<Vec<String>> = out["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut d: Vec<String> = serde_json::from_value(r["deleted"].clone()).unwrap();
            d.sort();
            d
        })
        .collect();
    assert_eq!(
        deleted,
        [
            vec!["app.log".to_owned(), "worker/2026-10-01.log".to_owned()],
            vec!["archive/2026-01.log.gz".to_owned()],
            vec!["daily/2026-07-01.pdf".to_owned()],
        ],
        "{out}"
    );
    // The low-disk alert went to the Teams webhook.
    assert_eq!(out["alert_sent"], true, "{out}");
    let hits = stage.intranet.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(
        (hits[0].method.clone(), hits[0].uri.as_str()),
        (Method::POST, "/webhookb2/alerts")
    );
    let card = hits[0].json();
    assert_eq!(card["type"], "message", "{card}");
    assert!(
        card.to_string().contains("ディスク空き容量の警告"),
        "{card}"
    );

    // Fired again, nothing is old any more.
    let (out, _) = deployment.fire_and_finish("nightly-cleanup").await;
    assert_eq!(out["files_deleted"], 0, "{out}");
    assert_eq!(remaining(&logs).len(), 4);
    assert_eq!(remaining(&reports).len(), 2);
    deployment.stop().await;
}

// ---------------------------------------------------------------- notify

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_notify_keeps_30_per_minute_across_two_workers() {
    let stage = Stage::new(|_| json!({})).await;
    let deployment = stage.deploy(2).await;
    // Both workers have registered (each announces itself when it starts).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, workers) = deployment
            .call(reqwest::Method::GET, "/v1/workers", SUBMIT, None)
            .await;
        if workers.as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two workers never registered: {workers}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 40 notifications at once.
    let jobs: Vec<Value> = (0..40)
        .map(|i| {
            json!({ "task": "notify", "input": {
                "kind": "json", "url": stage.intranet.url(&format!("/hooks/{i}")),
                "title": format!("通知 {i}"), "text": "バックアップが完了しました。" } })
        })
        .collect();
    let (s, v) = deployment
        .call(
            reqwest::Method::POST,
            "/v1/jobs/batch",
            SUBMIT,
            Some(json!({ "jobs": jobs })),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let ids: Vec<String> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["queue"], "notifications", "{j}");
            j["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 40);

    // Wait until the queue is settled for this window: nothing ready or in
    // flight, the rest delayed. (The first 30 run at once; the other 10 are
    // taken from the ready list and deferred to the next window.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let queue = loop {
        let (_, queues) = deployment
            .call(reqwest::Method::GET, "/v1/queues", SUBMIT, None)
            .await;
        let q = queues
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "notifications")
            .cloned()
            .unwrap_or_default();
        if q["ready"] == 0 && q["in_flight"] == 0 && q["delayed"].as_u64().unwrap_or(0) > 0 {
            break q;
        }
        assert!(
            Instant::now() < deadline,
            "the notifications queue never settled: {queues}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut by_state: HashMap<String, Vec<Value>> = HashMap::new();
    for id in &ids {
        let job = deployment.job(id).await;
        by_state
            .entry(job["state"].as_str().unwrap().to_owned())
            .or_default()
            .push(job);
    }
    let count = |s: &str| by_state.get(s).map_or(0, Vec::len);
    let hits = stage.intranet.hits();
    let checked_at = Utc::now();
    let done = &by_state["SUCCESS"];
    let first_start = done
        .iter()
        .map(|j| serde_json::from_value::<DateTime<Utc>>(j["started_at"].clone()).unwrap())
        .min()
        .unwrap();
    assert!(
        checked_at < first_start + chrono::Duration::seconds(58),
        "too slow to check the first window (first start {first_start}, checked at {checked_at})"
    );

    // Exactly 30 delivered in the first minute, the other 10 waiting
    // (pending, not failed) in the delayed set.
    assert_eq!(hits.len(), 30, "webhook hits in the first minute");
    assert!(hits.iter().all(|h| h.method == Method::POST && h.at < first_start + chrono::Duration::seconds(60)));
    assert_eq!(
        (count("SUCCESS"), count("PENDING")),
        (30, 10),
        "{by_state:?}"
    );
    assert_eq!(
        (queue["delayed"].as_u64(), queue["dead"].as_u64()),
        (Some(10), Some(0)),
        "{queue}"
    );
    // Both workers delivered some: the limit is global, not per worker.
    let mut ran_on: Vec<&str> = done.iter().map(|j| j["worker"].as_str().unwrap()).collect();
    ran_on.sort();
    ran_on.dedup();
    assert_eq!(
        ran_on.len(),
        2,
        "every notification ran on one worker: {ran_on:?}"
    );
    for job in done {
        assert_eq!(
            job["result"],
            json!({ "kind": "json", "status": 200 }),
            "{job}"
        );
    }

    // Each waiting job is due in the next window: no earlier than a minute
    // after the first start, and within the minute after that.
    let mut conn = redis_conn(&stage.redis);
    let delayed: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg("runner:{notifications}:delayed")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .unwrap();
    let mut delayed_ids: Vec<String> = delayed
        .iter()
        .map(|(m, _)| m.split('|').next().unwrap().to_owned())
        .collect();
    delayed_ids.sort();
    let mut pending_ids: Vec<String> = by_state["PENDING"]
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    pending_ids.sort();
    assert_eq!(delayed_ids, pending_ids);
    let window = first_start.timestamp_millis() as f64;
    for (member, due) in &delayed {
        assert!(
            *due >= window + 59_000.0 && *due <= window + 120_000.0,
            "{member} is due at {due}, first start at {window}"
        );
    }
    eprintln!(
        "notify: first start {first_start}, 30 delivered by {}, delayed until {:?}",
        hits.iter().map(|h| h.at).max().unwrap(),
        delayed
            .iter()
            .map(|(_, d)| (*d - window) / 1000.0)
            .collect::<Vec<_>>()
    );
    deployment.stop().await;
}

// ---------------------------------------------------------------- topology

/// Sets `path` (tables on the way) of a TOML table to `value`.
fn set(t: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, tables) = path.split_last().unwrap();
    let mut at = t;
    for k in tables {
        at = at
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
    }
    at.insert(last.to_string(), value);
}

/// The deployment as it ships: `deploy/runner.toml` (addresses, paths and
/// secrets rewritten; the two daily beats due a few seconds after start;
/// one beat added whose task is not bound), Redis over mutual TLS with AOF
/// and the ACL user of `deploy/redis-users.acl`, and separate `runner`
/// processes: the API, the two worker pools of the scenario (`email` at
/// concurrency 2, the other queues at 4, with a 3 s lease so that the test
/// need not wait 30 s for one to run out) and two scheduler replicas.
///
/// The reminder and the daily report fire by their cron times, once (mail
/// at a real SMTP server, the PDF read back with pdftotext). Then what
/// operators watch is made to happen: a job fails for good, the schedulers
/// stall past the grace (missed fires), the email queue hits its rate
/// limit, and the reports worker is frozen (SIGSTOP) in the middle of a
/// slow report while Redis is stopped (the API answers 503 meanwhile) and
/// restarted and a second reports worker starts: the report enqueued
/// meanwhile runs, the frozen worker's report is taken back after its
/// lease and runs again, and the frozen worker, thawed, finds its lease
/// lost. Every metric of docs/metrics.md is then served by some process
/// with a value that moved. Last, the reports workers are killed and one
/// started again: a report enqueued while none ran succeeds, and the
/// reminder's once-a-day guards survived the Redis restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_the_shipped_topology_runs_as_separate_processes() {
    use crate::ops::{Logged, get, until};
    use crate::redis_support::free_port;
    use crate::redis_tls::{Certs, TlsRedis, acl_file};

    let certs = Certs::new();
    let dir = TempDir::new().unwrap();
    let password = "topology-runner-password-5e1";
    let acl = acl_file(dir.path(), password);
    let mut redis = TlsRedis::start_with(&certs, true, Some(&acl), true);
    let (inbox, smtp_port) = Inbox::start();
    let intranet = Intranet::start(|uri| {
        if uri.path() == "/api/open-items" {
            open_items(Utc::now())
        } else {
            report_figures(uri)
        }
    })
    .await;
    let (logs, reports) = (dir.path().join("logs"), dir.path().join("reports"));
    for d in [&logs, &reports] {
        std::fs::create_dir_all(d).unwrap();
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = std::fs::read_to_string(root.join("deploy/runner.toml")).unwrap();
    let mut t: toml::Table =
        toml::from_str(&shipped.replace("https://intranet.example.com", &intranet.base())).unwrap();
    let s = |v: &str| toml::Value::String(v.to_string());
    let path_of = |p: &Path| s(p.to_str().unwrap());
    let api = format!("127.0.0.1:{}", free_port());
    set(&mut t, &["server", "listen"], s(&api));
    set(
        &mut t,
        &["auth", "admin"],
        toml::Value::Array(vec![s(ADMIN)]),
    );
    set(
        &mut t,
        &["auth", "submit"],
        toml::Value::Array(vec![s(SUBMIT)]),
    );
    set(
        &mut t,
        &["broker", "redis_url"],
        s(&redis.url(&format!("runner:{password}"))),
    );
    set(
        &mut t,
        &["broker", "tls_ca"],
        path_of(&certs.path("ca.pem")),
    );
    set(
        &mut t,
        &["broker", "tls_cert"],
        path_of(&certs.path("client.pem")),
    );
    set(
        &mut t,
        &["broker", "tls_key"],
        path_of(&certs.path("client.key")),
    );
    set(
        &mut t,
        &["host", "files", "roots", "reports"],
        path_of(&reports),
    );
    set(&mut t, &["host", "files", "roots", "logs"], path_of(&logs));
    set(&mut t, &["host", "mail", "host"], s("127.0.0.1"));
    set(
        &mut t,
        &["host", "mail", "port"],
        toml::Value::Integer(smtp_port.into()),
    );
    set(&mut t, &["host", "mail", "tls"], s("none"));
    for task in ["reminder", "report"] {
        set(
            &mut t,
            &["tasks", task, "grants", "http", "private_networks"],
            toml::Value::Array(vec![s("127.0.0.1/32")]),
        );
    }
    // The two daily beats come due today (Tokyo) a little after start: the
    // schedulers fire them by their cron, not the test.
    let due = (Utc::now() + chrono::Duration::seconds(20)).with_timezone(&TOKYO);
    let cron = format!("{} {} {} * * *", due.second(), due.minute(), due.hour());
    let beats = t["beats"].as_array_mut().unwrap();
    for b in beats.iter_mut() {
        let b = b.as_table_mut().unwrap();
        if ["daily-progress-reminder", "daily-report"].contains(&b["name"].as_str().unwrap()) {
            b.insert("cron".into(), s(&cron));
        }
    }
    // A config may name a task before it is bound: refused at every fire.
    let mut archive = toml::Table::new();
    archive.insert("name".into(), s("archive"));
    archive.insert("task".into(), s("archive"));
    archive.insert("every".into(), s("2s"));
    beats.push(toml::Value::Table(archive));
    let reminder_input = beat_input(&t, "daily-progress-reminder");
    let config = dir.path().join("runner.toml");
    std::fs::write(&config, toml::to_string(&t).unwrap()).unwrap();

    let log = |name: &str| dir.path().join(format!("{name}.log"));
    // Each picks a free port for its /metrics and says which: a port the
    // test chose at its start could be taken, by the time a process binds
    // it, by any connection of the tests running beside it.
    let ops = vec![("RUNNER_METRICS_LISTEN", "127.0.0.1:0".to_string())];
    let other_queues = "default,notifications,reports,verification,maintenance";
    let other_worker = |name: &str| {
        Logged::start(
            &["worker", "-Q", other_queues, "-c", "4", "--lease", "3s"],
            &config,
            log(name),
            &ops,
        )
    };
    let _api = Logged::start(&["serve"], &config, log("api"), &[]);
    let email = Logged::start(
        &["worker", "-Q", "email", "-c", "2"],
        &config,
        log("email"),
        &ops,
    );
    let other = other_worker("other");
    let s1 = Logged::start(&["scheduler"], &config, log("s1"), &ops);
    let s2 = Logged::start(&["scheduler"], &config, log("s2"), &ops);
    let [email_ops, other_ops, s1_ops, s2_ops] =
        [&email, &other, &s1, &s2].map(Logged::metrics_port);
    let ready = |base: String| async move {
        until(&format!("{base}/readyz"), "ready", |st, _| st == 200).await;
    };
    ready(format!("http://{api}")).await;
    for port in [email_ops, other_ops, s1_ops, s2_ops] {
        ready(format!("http://127.0.0.1:{port}")).await;
    }
    let metrics = |port: u16| async move {
        get(&format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .1
    };
    let metric_appears = |port: u16, what: &'static str, series: String| async move {
        until(
            &format!("http://127.0.0.1:{port}/metrics"),
            what,
            move |_, body| body.contains(&series),
        )
        .await
    };

    let deployment = Deployment::remote(format!("http://{api}"));
    // A job that fails for good: a dead letter.
    let failed = deployment
        .submit(json!({ "task": "notify", "input": { "kind": "teams" },
                         "retry": { "max_retries": 0 } }))
        .await;
    let failed = deployment.finished(failed["id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "FAILURE", "{failed}");

    // The daily beats fire by their cron, each once across the replicas.
    let (reminded, job) = deployment.cron_fired("daily-progress-reminder").await;
    assert_eq!(job["queue"], "email", "{job}");
    assert_eq!(reminded["sent"].as_u64(), Some(3), "{reminded}");
    let (out, job) = deployment.cron_fired("daily-report").await;
    assert_eq!(job["queue"], "reports", "{job}");
    let pdf = reports.join(out["path"].as_str().unwrap());
    assert!(pdftotext(&pdf).contains("日次業務レポート"));
    assert_eq!(inbox.messages().len(), 4);
    let mut fired = 0.0;
    for port in [s1_ops, s2_ops] {
        fired += sample(
            &metrics(port).await,
            "runner_beat_fires_total{result=\"fired\"}",
        );
    }
    assert_eq!(fired, 2.0, "each cron fire enqueued by one replica");

    // Both schedulers stall past the on-time grace: the archive beat's
    // due times meanwhile are missed (and skipped), seen by each.
    for sched in [&s1, &s2] {
        sched.signal(libc::SIGSTOP);
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    for sched in [&s1, &s2] {
        sched.signal(libc::SIGCONT);
    }
    for port in [s1_ops, s2_ops] {
        metric_appears(
            port,
            "counting missed fires",
            "runner_beat_misses_total{policy=\"skip\"}".into(),
        )
        .await;
    }

    // The email queue's rate limit (10/m) holds back a burst.
    for _ in 0..10 {
        deployment
            .submit(json!({ "task": "reminder", "input": reminder_input }))
            .await;
    }
    metric_appears(
        email_ops,
        "deferring by the rate limit",
        "runner_rate_limit_deferrals_total{queue=\"email\"}".into(),
    )
    .await;

    // A slow report is running when its worker freezes; a report is
    // enqueued meanwhile; Redis stops (the API says 503, counting the
    // failed command) and comes back; a second reports worker starts.
    let mut slow_input = beat_input(&t, "daily-report");
    slow_input["title"] = json!("遅延レポート");
    slow_input["source"] = json!(intranet.url("/api/reports/daily?date={period}&delay_ms=4000"));
    let slow = deployment
        .submit(json!({ "task": "report", "input": slow_input }))
        .await;
    let slow = slow["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    while deployment.job(&slow).await["state"] != "STARTED" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the slow report never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mails_before = inbox.messages().len();
    let frozen_metrics = metrics(other_ops).await;
    other.signal(libc::SIGSTOP);
    let fired = deployment.fire("daily-report").await;
    redis.stop();
    let (st, v) = deployment
        .call(reqwest::Method::GET, "/v1/queues", SUBMIT, None)
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    redis.start_again();
    let again = other_worker("other-again");
    let again_ops = again.metrics_port();
    for id in [fired["id"].as_str().unwrap(), &slow] {
        let job = deployment.finished(id).await;
        if job["state"] != "SUCCESS" {
            let (_, queues) = deployment
                .call(reqwest::Method::GET, "/v1/queues", SUBMIT, None)
                .await;
            panic!(
                "{job}\nqueues: {queues}\nagain:\n{}\nother:\n{}\nRedis:\n{}",
                again.log(),
                other.log(),
                redis.log()
            );
        }
    }
    let job = deployment.job(&slow).await;
    assert_eq!(job["redeliveries"], 1, "taken back after the lease: {job}");
    assert!(inbox.messages().len() >= mails_before + 2);
    // Thawed, the first worker finds the slow report's lease lost.
    other.signal(libc::SIGCONT);
    metric_appears(
        other_ops,
        "finding its lease lost",
        "runner_leases_lost_total{queue=\"reports\"}".into(),
    )
    .await;

    // Every process serves its metrics; together they have every
    // documented metric, each with a value that moved.
    let api_metrics = get(&format!("http://{api}/metrics")).await.unwrap().1;
    let mut bodies = vec![api_metrics, frozen_metrics];
    for port in [email_ops, other_ops, again_ops, s1_ops, s2_ops] {
        let body = metrics(port).await;
        assert!(body.contains("runner_"), "{port}:\n{body}");
        bodies.push(body);
    }
    let documented = crate::ops::documented_metrics();
    assert!(documented.len() >= 18, "{documented:?}");
    let still: Vec<&String> = documented
        .iter()
        .filter(|(name, kind)| !crate::ops::moved(&bodies, name, kind))
        .map(|(name, _)| name)
        .collect();
    assert!(
        still.is_empty(),
        "metrics that did not move: {still:?}\n{}",
        bodies.join("\n----\n")
    );

    // Both reports workers die (SIGKILL); a report enqueued meanwhile runs
    // once the reports worker is started again.
    // (Enqueued as a job: the API's beat store connection, unused since
    // the Redis restart, would answer its first command 503.)
    drop((other, again));
    let report_input = beat_input(&t, "daily-report");
    let waiting = deployment
        .submit(json!({ "task": "report", "input": report_input }))
        .await;
    let restarted = other_worker("other-restarted");
    let job = deployment.finished(waiting["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "SUCCESS", "{job}\n{}", restarted.log());
    drop((restarted, email));

    // The reminder's once-a-day guards (kv, written by Lua scripts) are
    // still there: with the default user off, Redis 7 dropped every
    // script's writes when it replayed its AOF (deploy/redis-users.acl).
    let admin = runner::queue::redis::open_client_with(
        &redis.url(&format!("admin:{}", crate::redis_tls::ADMIN_PASSWORD)),
        &certs.mutual(),
    )
    .unwrap();
    let mut conn = admin.get_connection().unwrap();
    let guards: Vec<String> = redis::cmd("KEYS")
        .arg("runner:kv:{reminder}:k:*")
        .query(&mut conn)
        .unwrap();
    assert_eq!(guards.len(), 3, "{guards:?}\nRedis log:\n{}", redis.log());
}

/// The input of beat `name` in a runner.toml.
fn beat_input(config: &toml::Table, name: &str) -> Value {
    config["beats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"].as_str() == Some(name))
        .map(|b| serde_json::to_value(&b["input"]).unwrap())
        .unwrap()
}

/// The value of `series` (name and labels as rendered) in a Prometheus
/// text body; 0 when absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
