//! The built-in tasks (`tasks/`) through the real sandbox with real
//! services: `runner run <task>.wasm --config runner.toml --task NAME`
//! against an SMTP server (mailin-embedded) that records what it receives,
//! a Redis of our own for the kv guard, real files in temp dirs, `pdftotext`
//! for the PDFs, and a loopback HTTP server (axum) standing in for the
//! intranet endpoint and the webhooks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use mail_parser::MimeHeaders;
use mailin_embedded::response::OK;
use mailin_embedded::{Handler, Response, Server};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::redis_support::RedisServer;
use crate::support::guest;

// ---------------------------------------------------------------- running

/// One directory per test: the config file and the compiled-module cache
/// shared by the test's runs.
struct Setup {
    dir: TempDir,
}

impl Setup {
    fn new() -> Self {
        Setup {
            dir: TempDir::new().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, text: &str) -> PathBuf {
        let path = self.path("runner.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `runner run <task>.wasm --config <config> --task <binding> --input <input>`.
    async fn run(&self, task: &str, binding: &str, input: &Value) -> Output {
        self.run_text(task, binding, &input.to_string()).await
    }

    /// [`Setup::run`] with the input as JSON text, for the cases where the
    /// order of an object's keys matters (`Value` sorts them).
    async fn run_text(&self, task: &str, binding: &str, input: &str) -> Output {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg("run")
            .arg(guest(task))
            .arg("--config")
            .arg(self.path("runner.toml"))
            .args(["--task", binding])
            .args(["--input", input])
            // The machine is shared: a generous wall clock, never asserted on.
            .args(["--timeout", "120s"])
            .arg("--cache-dir")
            .arg(self.path("cache"))
            .env_remove("RUST_LOG")
            .output()
            .await
            .expect("running the runner binary")
    }
}

/// The output JSON of a successful run.
#[track_caller]
fn success(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
}

/// A run that ended with exit `code` (10 fail, 11 retry) and says `expected`.
#[track_caller]
fn ended_with(output: &Output, code: i32, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        stderr.contains(expected),
        "stderr does not contain {expected:?}:\n{stderr}"
    );
}

/// A TOML string literal.
pub(crate) fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

pub(crate) fn toml_path(path: &Path) -> String {
    toml_str(path.to_str().unwrap())
}

// ---------------------------------------------------------------- SMTP

/// One message as the SMTP server received it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Received {
    pub(crate) rcpt_to: Vec<String>,
    pub(crate) data: Vec<u8>,
}

/// A real SMTP server (mailin-embedded, plain text on loopback) that keeps
/// every message; while `reject` is non-zero it answers RCPT with that code.
#[derive(Clone, Default)]
pub(crate) struct Inbox {
    messages: Arc<Mutex<Vec<Received>>>,
    reject: Arc<AtomicU16>,
    current: Received,
}

impl Inbox {
    /// Starts the server on a free port; it lives until the test process
    /// ends.
    pub(crate) fn start() -> (Inbox, u16) {
        let inbox = Inbox::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = Server::new(inbox.clone());
        server.with_name("localhost").with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        (inbox, port)
    }

    pub(crate) fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// The received messages, parsed.
    pub(crate) fn parsed(&self) -> Vec<(Received, mail_parser::Message<'static>)> {
        self.messages()
            .into_iter()
            .map(|m| {
                let parsed = mail_parser::MessageParser::default()
                    .parse(&m.data)
                    .expect("a parseable message")
                    .into_owned();
                (m, parsed)
            })
            .collect()
    }
}

impl Handler for Inbox {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, _from: &str) -> Response {
        self.current = Received::default();
        OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        let code = self.reject.load(Ordering::SeqCst);
        if code != 0 {
            return Response::custom(code, "try again later".to_owned());
        }
        self.current
            .rcpt_to
            .push(to.trim_matches(['<', '>']).to_owned());
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

/// `[host.mail]` for the test SMTP server.
fn mail_section(port: u16) -> String {
    format!(
        "[host.mail]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         from = {{ email = \"noreply@example.com\", name = \"業務システム\" }}\n"
    )
}

// ---------------------------------------------------------------- HTTP

/// One request as the loopback HTTP server received it.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A loopback HTTP server that records every request and answers each path
/// with the status and body it was given (200 `ok` for any other path).
#[derive(Clone)]
struct Web {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Web {
    async fn start(answers: HashMap<&'static str, (u16, String)>) -> Web {
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let recorded = requests.clone();
        let answers = Arc::new(answers);
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let recorded = recorded.clone();
                let answers = answers.clone();
                async move {
                    let (status, text) = answers
                        .get(uri.path())
                        .cloned()
                        .unwrap_or((200, "ok".to_owned()));
                    recorded.lock().unwrap().push(Request {
                        method,
                        uri: uri.to_string(),
                        headers,
                        body,
                    });
                    (StatusCode::from_u16(status).unwrap(), text)
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Web { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The `http` grant that lets a task reach this server.
    fn grant(&self) -> String {
        format!(
            "http = {{ allow = [{}], private_networks = [\"127.0.0.1/32\"] }}",
            toml_str(&format!("http://{}", self.addr))
        )
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- reminder

/// Seven users, one for each way the reminder decides. At 2026-11-22
/// 00:30 UTC it is Sunday 09:30 in Tokyo and Saturday 19:30 (EST) in New
/// York.
fn reminder_users() -> Value {
    json!([
        { "id": 1, "email": "taro@example.com", "name": "山田 太郎", "timezone": "Asia/Tokyo",
          "frequency": "daily", "quiet_hours": "22:00-07:00",
          "items": [ { "title": "見積書の作成", "due": "2026-11-25", "url": "https://intranet.example.com/tasks/7" },
                     "議事録の共有" ] },
        { "id": 2, "email": "jane@example.com", "name": "Jane Doe", "timezone": "America/New_York",
          "frequency": "daily", "quiet_hours": "18:00-08:00", "items": ["Q4 plan"] },
        { "id": 3, "email": "ken@example.com", "name": "佐藤 健", "timezone": "Asia/Tokyo",
          "frequency": "none", "items": ["経費精算"] },
        { "id": 4, "email": "mary@example.com", "name": "Mary Major", "timezone": "America/New_York",
          "frequency": "daily", "items": ["Budget review"] },
        { "id": 5, "email": "yuki@example.com", "name": "高橋 由紀", "timezone": "Asia/Tokyo",
          "frequency": "weekly", "weekday": "mon", "items": ["週報"] },
        { "id": 6, "email": "hana@example.com", "name": "鈴木 花子", "timezone": "Asia/Tokyo",
          "frequency": "weekly:sun", "items": ["週次レビュー"] },
        { "id": 7, "email": "sato@example.com", "timezone": "Asia/Tokyo", "items": [] },
    ])
}

/// `user id -> status or skip reason` from a reminder's output.
fn decisions(out: &Value) -> HashMap<String, String> {
    out["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {out}"))
        .iter()
        .map(|u| {
            let what = u["reason"].as_str().or(u["status"].as_str()).unwrap();
            (u["user"].as_str().unwrap().to_owned(), what.to_owned())
        })
        .collect()
}

fn reminder_config(
    setup: &Setup,
    smtp_port: u16,
    redis: &RedisServer,
    extra_grant: &str,
) -> PathBuf {
    setup.config(&format!(
        "{}\n[host.kv]\nredis_url = {}\n[host.http]\n\n\
         [tasks.reminder.grants]\nkv = {{}}\nmail = {{}}\n{extra_grant}\n",
        mail_section(smtp_port),
        toml_str(&redis.url()),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn reminder_mails_each_eligible_user_once_per_local_day() {
    let (inbox, port) = Inbox::start();
    let redis = RedisServer::start();
    let setup = Setup::new();
    reminder_config(&setup, port, &redis, "");
    let input = json!({
        "now": "2026-11-22T00:30:00Z",
        "link": "https://intranet.example.com/progress",
        "users": reminder_users(),
    });

    let out = success(&setup.run("reminder", "reminder", &input).await);
    assert_eq!(
        (out["sent"].as_u64(), out["skipped"].as_u64()),
        (Some(3), Some(4)),
        "{out}"
    );
    let expected: HashMap<String, String> = [
        ("1", "sent"),
        ("2", "quiet_hours"),
        ("3", "frequency_none"),
        ("4", "sent"),
        ("5", "not_today"),
        ("6", "sent"),
        ("7", "no_items"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(decisions(&out), expected, "{out}");

    // Exactly one mail per eligible user, with the subject of its local day.
    let mut mails: Vec<(String, String, String, String)> = inbox
        .parsed()
        .into_iter()
        .map(|(received, m)| {
            assert_eq!(received.rcpt_to.len(), 1, "{received:?}");
            let to = m.to().and_then(|a| a.first()).expect("a To header");
            (
                received.rcpt_to[0].clone(),
                to.name().unwrap_or_default().to_owned(),
                m.subject().unwrap_or_default().to_owned(),
                m.body_text(0).unwrap_or_default().into_owned(),
            )
        })
        .collect();
    mails.sort();
    let summary: Vec<(&str, &str, &str)> = mails
        .iter()
        .map(|(to, name, subject, _)| (to.as_str(), name.as_str(), subject.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "hana@example.com",
                "鈴木 花子",
                "今週の進捗リマインダー（2026年11月22日）"
            ),
            (
                "mary@example.com",
                "Mary Major",
                "本日の進捗リマインダー（2026年11月21日）"
            ),
            (
                "taro@example.com",
                "山田 太郎",
                "本日の進捗リマインダー（2026年11月22日）"
            ),
        ]
    );
    let taro = &mails[2].3;
    for expected in [
        "山田 太郎 さん",
        "進捗の報告がまだのタスクが 2 件あります",
        "・見積書の作成（期限: 2026-11-25）",
        "https://intranet.example.com/tasks/7",
        "・議事録の共有",
        "進捗の報告はこちら: https://intranet.example.com/progress",
    ] {
        assert!(taro.contains(expected), "{expected:?} not in:\n{taro}");
    }

    // A second fire the same day sends nothing: every key is still there.
    let again = success(&setup.run("reminder", "reminder", &input).await);
    assert_eq!(again["sent"], 0, "{again}");
    let second = decisions(&again);
    for user in ["1", "4", "6"] {
        assert_eq!(second[user], "already_sent", "{again}");
    }
    assert_eq!(inbox.messages().len(), 3, "no mail on the second fire");

    // The next day is a new local day: Monday in Tokyo (yuki's weekday),
    // Sunday in New York.
    let next_day = json!({ "now": "2026-11-23T00:30:00Z", "users": reminder_users() });
    let out = success(&setup.run("reminder", "reminder", &next_day).await);
    let third = decisions(&out);
    assert_eq!(
        ["1", "2", "4", "5", "6"].map(|u| third[u].as_str()),
        ["sent", "quiet_hours", "sent", "sent", "not_today"],
        "{out}"
    );
    assert_eq!(inbox.messages().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn reminder_releases_the_day_key_when_the_send_fails_transiently() {
    let (inbox, port) = Inbox::start();
    let redis = RedisServer::start();
    let setup = Setup::new();
    reminder_config(&setup, port, &redis, "");
    let input = json!({
        "now": "2026-11-22T00:30:00Z",
        "users": [ { "id": "u1", "email": "taro@example.com", "timezone": "Asia/Tokyo",
                     "items": ["日報"] } ],
    });

    // The server answers 451: the job asks to be retried and mails nobody.
    inbox.reject.store(451, Ordering::SeqCst);
    ended_with(
        &setup.run("reminder", "reminder", &input).await,
        11,
        "users[0] (u1): transient",
    );
    assert!(inbox.messages().is_empty());

    // The retry sends: the failed attempt did not keep the day's key.
    inbox.reject.store(0, Ordering::SeqCst);
    let out = success(&setup.run("reminder", "reminder", &input).await);
    assert_eq!(decisions(&out)["u1"], "sent", "{out}");
    assert_eq!(inbox.messages().len(), 1);

    // And from then on the key holds.
    let out = success(&setup.run("reminder", "reminder", &input).await);
    assert_eq!(decisions(&out)["u1"], "already_sent", "{out}");
    assert_eq!(inbox.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn reminder_reads_users_from_a_granted_endpoint() {
    let (inbox, port) = Inbox::start();
    let redis = RedisServer::start();
    let body = json!({ "users": [
        { "id": 9, "email": "taro@example.com", "name": "山田 太郎", "timezone": "Asia/Tokyo",
          "items": ["月次締め"] }
    ] });
    let web = Web::start(HashMap::from([("/open-items", (200, body.to_string()))])).await;
    let setup = Setup::new();
    let input = json!({ "now": "2026-11-22T00:30:00Z", "source": web.url("/open-items") });

    // Without the http grant the endpoint is out of reach.
    reminder_config(&setup, port, &redis, "");
    ended_with(
        &setup.run("reminder", "reminder", &input).await,
        10,
        "denied",
    );
    assert!(web.requests().is_empty());

    reminder_config(&setup, port, &redis, &web.grant());
    let out = success(&setup.run("reminder", "reminder", &input).await);
    assert_eq!(decisions(&out)["9"], "sent", "{out}");
    let requests = web.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, Method::GET);
    let mails = inbox.parsed();
    assert_eq!(mails.len(), 1);
    assert_eq!(
        mails[0].1.subject(),
        Some("本日の進捗リマインダー（2026年11月22日）")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reminder_refuses_bad_user_records_before_sending() {
    let (inbox, port) = Inbox::start();
    let redis = RedisServer::start();
    let setup = Setup::new();
    reminder_config(&setup, port, &redis, "");
    let good = json!({ "email": "taro@example.com", "timezone": "Asia/Tokyo", "items": ["x"] });
    for (bad, expected) in [
        (
            json!({ "email": "a@example.com", "timezone": "Asia/Tokio", "items": ["x"] }),
            "users[1].timezone: unknown time zone \"Asia/Tokio\"",
        ),
        (
            json!({ "email": "a@example.com", "quiet_hours": "22:00", "items": ["x"] }),
            "users[1].quiet_hours:",
        ),
        (
            json!({ "email": "a@example.com", "frequency": "hourly", "items": ["x"] }),
            "users[1].frequency:",
        ),
    ] {
        let input = json!({ "now": "2026-11-22T00:30:00Z", "users": [good, bad] });
        ended_with(
            &setup.run("reminder", "reminder", &input).await,
            10,
            expected,
        );
    }
    assert!(inbox.messages().is_empty(), "nothing sent for a bad batch");
}

// ---------------------------------------------------------------- report

pub(crate) fn pdftotext(pdf: &Path) -> String {
    let out = std::process::Command::new("pdftotext")
        .arg(pdf)
        .arg("-")
        .output()
        .expect("running pdftotext (poppler-utils)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn report_saves_a_japanese_pdf_and_mails_it_intact() {
    let (inbox, port) = Inbox::start();
    let setup = Setup::new();
    let reports = setup.path("reports");
    setup.config(&format!(
        "{}\n[host.pdf]\n\n[host.files.roots]\nreports = {}\n\n\
         [tasks.report.grants]\npdf = true\nmail = {{}}\nfiles = {{ reports = \"read-write\" }}\n",
        mail_section(port),
        toml_path(&reports),
    ));
    let input = json!({
        "kind": "daily",
        "period": "2026-11-22",
        "timezone": "Asia/Tokyo",
        "title": "日次業務レポート",
        "data": {
            "summary": { "処理件数": 128, "失敗": 2 },
            "tables": [ { "heading": "部署別", "columns": ["部署", "件数"],
                          "rows": [["営業部", 80], ["経理部", 48]] } ],
            "notes": "失敗した 2 件は翌日に再処理します。"
        },
        "recipients": ["経理部 <keiri@example.com>", "boss@example.com"],
    });

    let out = success(&setup.run("report", "report", &input).await);
    assert_eq!(out["path"], "daily/2026-11-22.pdf", "{out}");
    assert_eq!(
        out["recipients"],
        json!(["keiri@example.com", "boss@example.com"])
    );
    let pdf_path = reports.join("daily/2026-11-22.pdf");
    let pdf = std::fs::read(&pdf_path).expect("the PDF in the reports root");
    assert!(pdf.starts_with(b"%PDF-"));
    assert_eq!(Some(pdf.len() as u64), out["bytes"].as_u64(), "{out}");

    let text = pdftotext(&pdf_path);
    for expected in [
        "日次業務レポート",
        "対象日",
        "2026-11-22",
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

    let mails = inbox.parsed();
    assert_eq!(mails.len(), 1);
    let (received, mail) = &mails[0];
    let mut rcpts = received.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["boss@example.com", "keiri@example.com"]);
    assert_eq!(mail.subject(), Some("日次業務レポート（2026-11-22）"));
    assert!(
        mail.body_text(0)
            .unwrap_or_default()
            .contains("処理件数: 128"),
        "{:?}",
        mail.body_text(0)
    );
    let attachments: Vec<_> = mail.attachments().collect();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].attachment_name(), Some("2026-11-22.pdf"));
    assert_eq!(
        attachments[0]
            .content_type()
            .map(|c| (c.ctype(), c.subtype())),
        Some(("application", Some("pdf")))
    );
    assert!(
        attachments[0].contents() == pdf.as_slice(),
        "the attachment is the saved PDF, intact"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monthly_report_fetches_its_figures_from_a_granted_endpoint() {
    let data = json!({
        "summary": { "請求書": 31 },
        "tables": [ { "heading": "取引先別", "columns": ["取引先", "金額"],
                      "rows": [["株式会社サンプル", "1,200,000"], ["見本商事", null]] } ]
    });
    let web = Web::start(HashMap::from([("/figures", (200, data.to_string()))])).await;
    let setup = Setup::new();
    let reports = setup.path("reports");
    setup.config(&format!(
        "[host.pdf]\n[host.http]\n[host.files.roots]\nreports = {}\n\n\
         [tasks.report.grants]\npdf = true\nfiles = {{ reports = \"read-write\" }}\n{}\n",
        toml_path(&reports),
        web.grant(),
    ));
    let input = json!({
        "kind": "monthly",
        "period": "2026-10",
        "source": web.url("/figures?month={period}"),
    });

    let out = success(&setup.run("report", "report", &input).await);
    assert_eq!(out["path"], "monthly/2026-10.pdf", "{out}");
    assert_eq!(out["message_id"], Value::Null, "no recipients, no mail");
    let requests = web.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].uri, "/figures?month=2026-10");
    let text = pdftotext(&reports.join("monthly/2026-10.pdf"));
    for expected in [
        "月次レポート",
        "対象月",
        "2026-10",
        "請求書",
        "株式会社サンプル",
        "1,200,000",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }

    // A row that does not fit its columns is refused before anything renders.
    let bad = json!({
        "kind": "monthly", "period": "2026-10",
        "data": { "tables": [ { "columns": ["a", "b"], "rows": [["only one"]] } ] }
    });
    ended_with(
        &setup.run("report", "report", &bad).await,
        10,
        "tables[0].rows[0] has 1 cells but there are 2 columns",
    );
    // A period is a date as written, or refused: before, chrono's lenient
    // reading took these, and the report went to `daily/2026-1-5.pdf`,
    // `daily/ 2026-01-05.pdf` or the year 26.
    for (kind, period) in [
        ("daily", "2026-1-5"),
        ("daily", " 2026-01-05"),
        ("daily", "26-11-22"),
        ("monthly", "2026-1"),
    ] {
        let bad = json!({ "kind": kind, "period": period, "data": {} });
        ended_with(
            &setup.run("report", "report", &bad).await,
            10,
            &format!("period: {period:?} is not a"),
        );
    }
    assert!(!reports.join("daily").exists(), "nothing written");
}

// ---------------------------------------------------------------- cleanup

/// Writes `name` (10 bytes) under `dir`, last modified `days` ago.
pub(crate) fn file_aged(dir: &Path, name: &str, days: u64) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"0123456789").unwrap();
    let when = SystemTime::now() - Duration::from_secs(days * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

pub(crate) fn remaining(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = crate::support::files_in(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

fn deleted_paths(rule: &Value) -> Vec<String> {
    let mut paths: Vec<String> = rule["deleted"]
        .as_array()
        .unwrap_or_else(|| panic!("no deleted list in {rule}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    paths.sort();
    paths
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_deletes_exactly_the_old_matching_files_and_alerts_on_low_disk() {
    let web = Web::start(HashMap::new()).await;
    let setup = Setup::new();
    let logs = setup.path("logs");
    let reports = setup.path("reports");
    for (name, days) in [
        ("app.log", 30),
        ("worker/2026-10-01.log", 40),
        ("worker/today.log", 0),
        ("recent.log", 3),
        ("keep.txt", 60),
    ] {
        file_aged(&logs, name, days);
    }
    for (name, days) in [
        ("daily/2026-07-01.pdf", 120),
        ("daily/2026-11-20.pdf", 2),
        ("monthly/2026-01.pdf", 300),
    ] {
        file_aged(&reports, name, days);
    }
    setup.config(&format!(
        "[host.http]\n[host.files.roots]\nlogs = {}\nreports = {}\n\n\
         [tasks.cleanup.grants]\nfiles = {{ logs = \"read-write\", reports = \"read-write\" }}\n{}\n\n\
         [tasks.cleanup-nohttp.grants]\nfiles = {{ logs = \"read-write\", reports = \"read-write\" }}\n",
        toml_path(&logs),
        toml_path(&reports),
        web.grant(),
    ));
    let rules = json!([
        { "root": "logs", "glob": "**/*.log", "older_than_days": 7 },
        { "root": "reports", "glob": "daily/*.pdf", "older_than_days": 90 },
    ]);
    let before_logs = remaining(&logs);
    let before_reports = remaining(&reports);

    // A dry run deletes nothing and posts nothing, but says what it would do.
    let dry = json!({ "rules": rules, "dry_run": true, "alert_below": "100%",
                      "webhook": web.url("/alert") });
    let out = success(&setup.run("cleanup", "cleanup", &dry).await);
    assert_eq!(out["dry_run"], true);
    assert_eq!(
        deleted_paths(&out["rules"][0]),
        ["app.log", "worker/2026-10-01.log"],
        "{out}"
    );
    assert_eq!(
        deleted_paths(&out["rules"][1]),
        ["daily/2026-07-01.pdf"],
        "{out}"
    );
    assert_eq!(out["bytes_freed"], 30, "{out}");
    assert_eq!(out["alert_sent"], false, "{out}");
    assert_eq!(remaining(&logs), before_logs);
    assert_eq!(remaining(&reports), before_reports);
    assert!(web.requests().is_empty(), "a dry run posts no alert");

    // For real, with a threshold every filesystem is under (100% free).
    let real = json!({ "rules": rules, "alert_below": "100%", "webhook": web.url("/alert") });
    let out = success(&setup.run("cleanup", "cleanup", &real).await);
    assert_eq!(
        (out["files_deleted"].as_u64(), out["bytes_freed"].as_u64()),
        (Some(3), Some(30)),
        "{out}"
    );
    assert_eq!(
        remaining(&logs),
        ["keep.txt", "recent.log", "worker/today.log"]
    );
    assert_eq!(
        remaining(&reports),
        ["daily/2026-11-20.pdf", "monthly/2026-01.pdf"]
    );
    assert_eq!(out["alert_sent"], true, "{out}");
    let disk = out["disk"].as_array().unwrap();
    assert_eq!(disk.len(), 2, "{out}");
    assert!(
        disk.iter()
            .all(|d| d["low"] == true && d["total_bytes"].as_u64() > Some(0)),
        "{out}"
    );
    let requests = web.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, Method::POST);
    assert_eq!(requests[0].uri, "/alert");
    assert_eq!(
        requests[0]
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let alert = requests[0].json();
    assert_eq!(alert["alert"], "low_disk", "{alert}");
    assert_eq!(alert["threshold"], "100%", "{alert}");
    let roots: Vec<&str> = alert["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["root"].as_str().unwrap())
        .collect();
    assert_eq!(roots, ["logs", "reports"], "{alert}");

    // Above the threshold (less than one byte free is never the case), no alert.
    let fine = json!({ "rules": rules, "alert_below": 1, "webhook": web.url("/alert") });
    let out = success(&setup.run("cleanup", "cleanup", &fine).await);
    assert_eq!(
        (out["files_deleted"].as_u64(), out["alert_sent"].as_bool()),
        (Some(0), Some(false)),
        "{out}"
    );
    assert_eq!(web.requests().len(), 1);

    // Without the http grant the alert cannot be posted: the job says so.
    ended_with(
        &setup.run("cleanup", "cleanup-nohttp", &real).await,
        10,
        "posting the low-disk alert: denied",
    );
    assert_eq!(web.requests().len(), 1);

    // Slack-shaped alert.
    let slack = json!({ "rules": rules, "alert_below": "100%", "webhook": web.url("/slack"),
                        "webhook_kind": "slack" });
    success(&setup.run("cleanup", "cleanup", &slack).await);
    let body = web.requests()[1].json();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("ディスク空き容量の警告"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_refuses_rules_that_would_delete_everything() {
    let setup = Setup::new();
    let logs = setup.path("logs");
    file_aged(&logs, "a.log", 1);
    setup.config(&format!(
        "[host.files.roots]\nlogs = {}\n[tasks.cleanup.grants]\nfiles = {{ logs = \"read-write\" }}\n",
        toml_path(&logs)
    ));
    let input = json!({ "rules": [ { "root": "logs", "glob": "*.log", "older_than_days": 0 } ] });
    ended_with(
        &setup.run("cleanup", "cleanup", &input).await,
        10,
        "rules[0].older_than_days must be at least 1",
    );
    let input = json!({ "rules": [ { "root": "logs", "glob": "*.log", "older_than_days": 1 } ],
                        "alert_below": "12 parsecs" });
    ended_with(
        &setup.run("cleanup", "cleanup", &input).await,
        10,
        "alert_below:",
    );
    assert_eq!(remaining(&logs), ["a.log"]);
}

// ---------------------------------------------------------------- notify

#[tokio::test(flavor = "multi_thread")]
async fn notify_posts_slack_teams_and_json_shaped_messages() {
    let web = Web::start(HashMap::from([
        ("/down", (503, "maintenance".to_owned())),
        ("/gone", (404, "no such hook".to_owned())),
    ]))
    .await;
    let setup = Setup::new();
    setup.config(&format!(
        "[host.http]\n\n[tasks.notify.grants]\n{}\n\n[tasks.notify-denied.grants]\n",
        web.grant()
    ));
    // As text: the fields are shown in the order written.
    let message = |kind: &str, path: &str| -> String {
        format!(
            r#"{{"kind": "{kind}", "url": "{}", "title": "夜間バックアップ",
                "text": "すべてのバックアップを検証しました。",
                "fields": {{ "対象": "12 台", "失敗": 0 }}}}"#,
            web.url(path)
        )
    };

    let out = success(
        &setup
            .run_text("notify", "notify", &message("slack", "/slack"))
            .await,
    );
    assert_eq!(
        (out["kind"].as_str(), out["status"].as_u64()),
        (Some("slack"), Some(200))
    );
    let out = success(
        &setup
            .run_text("notify", "notify", &message("teams", "/teams"))
            .await,
    );
    assert_eq!(out["kind"], "teams");
    success(
        &setup
            .run_text("notify", "notify", &message("json", "/json"))
            .await,
    );

    let requests = web.requests();
    assert_eq!(requests.len(), 3);
    let slack = requests[0].json();
    assert_eq!(
        slack["text"], "*夜間バックアップ*\nすべてのバックアップを検証しました。",
        "{slack}"
    );
    let fields = &slack["blocks"][1]["fields"];
    assert_eq!(fields[0]["text"], "*対象*\n12 台", "{slack}");
    assert_eq!(fields[1]["text"], "*失敗*\n0", "{slack}");

    let teams = requests[1].json();
    assert_eq!(teams["type"], "message", "{teams}");
    let card = &teams["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let body = &card["content"]["body"];
    assert_eq!(body[0]["text"], "夜間バックアップ", "{teams}");
    assert_eq!(
        body[1]["text"], "すべてのバックアップを検証しました。",
        "{teams}"
    );
    assert_eq!(body[2]["type"], "FactSet", "{teams}");
    assert_eq!(
        body[2]["facts"][0],
        json!({ "title": "対象", "value": "12 台" })
    );

    let generic = requests[2].json();
    assert_eq!(generic["title"], "夜間バックアップ", "{generic}");
    assert_eq!(
        generic["fields"],
        json!({ "対象": "12 台", "失敗": 0 }),
        "{generic}"
    );
    assert!(generic["job"]["id"].is_string(), "{generic}");

    // 5xx asks for a retry, another 4xx fails, no grant is denied.
    ended_with(
        &setup
            .run_text("notify", "notify", &message("slack", "/down"))
            .await,
        11,
        "HTTP 503",
    );
    ended_with(
        &setup
            .run_text("notify", "notify", &message("teams", "/gone"))
            .await,
        10,
        "HTTP 404",
    );
    ended_with(
        &setup
            .run_text("notify", "notify-denied", &message("json", "/json"))
            .await,
        10,
        "denied",
    );
    assert_eq!(
        web.requests().len(),
        5,
        "the denied call never left the sandbox"
    );

    let empty = json!({ "kind": "slack", "url": web.url("/slack") });
    ended_with(
        &setup.run("notify", "notify", &empty).await,
        10,
        "needs a `title` or a `text`",
    );
}

// ---------------------------------------------------------------- examples

#[tokio::test(flavor = "multi_thread")]
async fn my_first_task_totals_an_order_and_fails_a_bad_one() {
    let setup = Setup::new();
    setup.config("[tasks.my-first-task]\n");
    let order = json!({
        "items": [ { "name": "りんご", "price": 120, "quantity": 3 },
                   { "name": "みかん", "price": 80, "quantity": 5 } ],
        "tax_percent": 10,
    });
    let out = success(&setup.run("my_first_task", "my-first-task", &order).await);
    assert_eq!(
        out,
        json!({ "items": 2, "subtotal": 760, "tax": 76, "total": 836 })
    );
    let zero = json!({ "items": [ { "name": "りんご", "price": 120, "quantity": 0 } ] });
    ended_with(
        &setup.run("my_first_task", "my-first-task", &zero).await,
        10,
        "items[0] (りんご): quantity must be at least 1",
    );
}

/// `examples/runner.toml` and `deploy/runner.toml` load as the runner loads
/// them, describe the same back-office deployment, and their beats are
/// valid: the reminder fires at 09:00 in Tokyo (00:00 UTC).
#[test]
fn the_example_deployments_load() {
    use runner::scheduler::Beat;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["examples/runner.toml", "deploy/runner.toml"] {
        let config = runner::config::Config::load(&root.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        let limits: HashMap<&str, &str> = config.queue_limits().collect();
        assert_eq!(
            limits,
            HashMap::from([("email", "10/m"), ("notifications", "30/m")]),
            "{file}"
        );
        let mut queues: Vec<&str> = config.queues.keys().map(String::as_str).collect();
        queues.sort_unstable();
        assert_eq!(
            queues,
            [
                "default",
                "email",
                "maintenance",
                "notifications",
                "reports",
                "verification"
            ],
            "{file}"
        );
        for (name, queue) in [
            ("reminder", "email"),
            ("report", "reports"),
            ("cleanup", "maintenance"),
            ("notify", "notifications"),
        ] {
            let task = &config.tasks[name];
            assert_eq!(
                task.module.as_deref(),
                Some(format!("builtin:{name}").as_str())
            );
            assert_eq!(task.queue.as_deref(), Some(queue), "{file}: {name}");
            let retry = task.retry.as_ref().expect("a retry policy");
            assert_eq!(
                (
                    retry.max_retries,
                    retry.backoff_base_ms,
                    retry.backoff_cap_ms,
                    retry.jitter
                ),
                (3, 60_000, 600_000, true),
                "{file}: {name}"
            );
        }
        let beats: Vec<Beat> = config.beats.clone();
        for beat in &beats {
            beat.validate()
                .unwrap_or_else(|e| panic!("{file}: beat {}: {e}", beat.name));
            assert!(
                config.tasks.contains_key(&beat.task),
                "{file}: {}",
                beat.name
            );
        }
        let reminder = beats
            .iter()
            .find(|b| b.task == "reminder")
            .expect("a reminder beat");
        let after = "2026-11-21T12:00:00Z".parse().unwrap();
        assert_eq!(
            reminder.schedule().unwrap().next_after(after),
            Some("2026-11-22T00:00:00Z".parse().unwrap()),
            "{file}"
        );
    }
}

// ---------------------------------------------------------------- sources

/// The built-in tasks are what a task author can write: plain crates on the
/// SDK's public API, with no generated bindings, no WIT of their own, no
/// build scripts and no `unsafe`.
#[test]
fn builtin_tasks_use_only_the_sdks_public_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tasks");
    let allowed = ["runner-sdk", "serde", "serde_json", "chrono", "chrono-tz"];
    let mut crates = 0;
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let dir = e.path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        crates += 1;
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let doc: toml::Table =
            toml::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        assert!(
            doc.get("package").and_then(|p| p.get("build")).is_none()
                && !dir.join("build.rs").exists(),
            "{name} has a build script"
        );
        for section in ["dependencies", "build-dependencies", "target"] {
            let Some(deps) = doc.get(section) else {
                continue;
            };
            assert_eq!(
                section, "dependencies",
                "{name}: [{section}] is not expected"
            );
            for dep in deps.as_table().unwrap().keys() {
                assert!(allowed.contains(&dep.as_str()), "{name} depends on {dep}");
            }
        }
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            assert!(
                n != "wit" && !n.ends_with(".wit"),
                "{name} carries its own WIT: {n}"
            );
        }
        let files = crate::support::files_with_ext(&dir.join("src"), "rs");
        assert!(!files.is_empty(), "{name} has no sources");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for banned in [
                "wit_bindgen",
                "__private",
                "unsafe",
                "extern \"C\"",
                "export_name",
                "no_mangle",
                "bindings::",
            ] {
                assert!(!text.contains(banned), "{} uses {banned}", f.display());
            }
            assert!(
                text.contains("runner_sdk"),
                "{} does not use the SDK",
                f.display()
            );
        }
    }
    assert_eq!(crates, 4, "reminder, report, cleanup, notify");
}
