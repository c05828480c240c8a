//! The dashboard in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/setup`), driven over the W3C
//! WebDriver protocol by a small client on reqwest, against a server, a
//! worker and the scheduler on a loopback port. Also `/v1/events` directly.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use runner::names::ModuleHash;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::api::{ADMIN, SUBMIT, TestApi};
use crate::support::guest_bytes;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free port, and one Chromium session through it.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/setup installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = crate::support::http_client();
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = TempDir::new().unwrap();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1300,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let res: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {res}"))
            .to_string();
        Browser {
            driver,
            http,
            session: format!("{base}/session/{session}"),
            _profile: profile,
        }
    }

    async fn command(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut rb = self.http.request(method, format!("{}{path}", self.session));
        rb = rb.json(&body.unwrap_or_else(|| json!({})));
        let res: Value = rb
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match res["value"].get("error") {
            Some(err) => Err(format!("{err}: {}", res["value"]["message"])),
            None => Ok(res["value"].clone()),
        }
    }

    async fn go(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .unwrap();
    }

    async fn find(&self, css: &str) -> Result<String, String> {
        let v = self
            .command(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        Ok(v[ELEMENT].as_str().unwrap().to_string())
    }

    /// Runs `script` in the page (`arguments[0]` is `arg`).
    async fn js(&self, script: &str, arg: Value) -> Value {
        self.command(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [arg] })),
        )
        .await
        .unwrap()
    }

    /// The text of the first element matching `css`, `None` if there is none.
    async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                json!(css),
            )
            .await;
        v.as_str().map(str::to_owned)
    }

    /// Waits until `css` has a text for which `ok` holds; returns it.
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let t = self.text(css).await;
            if let Some(t) = &t
                && ok(t)
            {
                return t.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "waiting for {what} at {css}: last text {t:?}; page status {:?}, error {:?}",
                self.text("#status").await,
                self.text("#error").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A real click (WebDriver element click) on the first match of `css`,
    /// waiting for it to exist; retried if a refresh replaced it meanwhile.
    async fn click(&self, css: &str) {
        let started = Instant::now();
        loop {
            let r = match self.find(css).await {
                Ok(id) => self
                    .command(Method::POST, &format!("/element/{id}/click"), None)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return,
                Err(e) => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "cannot click {css}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replaces the value of the input or textarea at `css` by typing.
    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await.unwrap();
        self.command(Method::POST, &format!("/element/{id}/clear"), None)
            .await
            .unwrap();
        self.command(
            Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .unwrap();
    }

    /// Presses Enter on the element `css` (as a keyboard user does on a
    /// focused button).
    async fn press_enter(&self, css: &str) {
        let id = self.find(css).await.unwrap();
        self.command(
            Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": "\u{E007}" })),
        )
        .await
        .unwrap();
    }

    /// Keeps a screenshot of the page as a test artifact:
    /// `target/test-artifacts/dashboard/<name>.png`.
    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self
            .command(Method::GET, "/screenshot", None)
            .await
            .unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-artifacts/dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    async fn quit(mut self) {
        let _ = self.command(Method::DELETE, "", None).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn admin(api: &TestApi, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    api.call(api.req(method, path, Some(ADMIN)).json(&body))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_shows_and_steers_the_system_in_chromium() {
    let api = TestApi::start_with(None, "64MiB", true, true).await;
    api.bind_example("greet", "hello").await;
    let panicker = guest_bytes("panicker");
    api.upload(&panicker).await;
    let no_retry =
        json!({ "max_retries": 0, "backoff_base_ms": 10, "backoff_cap_ms": 10, "jitter": false });
    let (s, v) = api
        .bind(
            "boom",
            json!({ "module": ModuleHash::of(&panicker), "retry": no_retry }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Three jobs on a queue no worker consumes: they stay ready (an
    // unconfigured queue: an admin's to choose).
    for i in 0..3 {
        let (s, v) = admin(
            &api,
            Method::POST,
            "/v1/jobs",
            json!({ "task": "greet", "queue": "parked", "input": { "name": i.to_string() } }),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    }
    // A beat that would fire only in an hour: fired by hand below.
    let (s, v) = admin(
        &api,
        Method::PUT,
        "/v1/schedules/hourly-greet",
        json!({ "task": "greet", "every": "1h", "input": { "name": "beat" } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A task whose first run fails for good (its downstream is down; a
    // replay succeeds), rate limited.
    let counter = guest_bytes("counter");
    api.upload(&counter).await;
    let (s, v) = api
        .bind(
            "counter",
            json!({ "module": ModuleHash::of(&counter), "retry": no_retry,
                    "rate_limit": "100/h", "grants": { "kv": {} } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A job that fails for good: a dead letter.
    let (_, v) = api.enqueue(json!({ "task": "boom" })).await;
    let dead_id = v["id"].as_str().unwrap().to_string();
    assert_eq!(api.wait(&dead_id).await["state"], "FAILURE");

    let b = Browser::start().await;
    b.go(&format!("{}/dashboard#token={ADMIN}", api.url)).await;

    // Overview: the queue counts and the worker.
    b.wait_text(
        "#queues tr[data-queue=parked] td.ready",
        "3 ready jobs",
        |t| t == "3",
    )
    .await;
    b.wait_text(
        "#queues tr[data-queue=default] td.dead",
        "1 dead letter",
        |t| t == "1",
    )
    .await;
    b.wait_text("#workers tbody tr td.name", "a worker", |t| !t.is_empty())
        .await;
    assert_eq!(
        b.text("#workers tbody tr td.running").await.as_deref(),
        Some("0")
    );
    // Live counters: the failed job counts at once (the worker's last
    // heartbeat, at its start, said 0; the next is a minute away).
    b.wait_text("#workers tbody tr td.processed", "a live count", |t| {
        t == "1"
    })
    .await;
    assert_eq!(
        b.text("#workers tbody tr td.failed").await.as_deref(),
        Some("1")
    );
    // The last hour of all queues: the failure counted, the parked jobs
    // waiting.
    b.wait_text(
        "#chart-throughput .summary",
        "the failure in the chart",
        |t| t.contains("0 succeeded, 1 failed"),
    )
    .await;
    b.wait_text(
        "#chart-waiting .summary",
        "the waiting jobs in the chart",
        |t| t.contains("3 waiting now"),
    )
    .await;
    let label = b
        .js(
            "return document.querySelector('#chart-throughput svg').getAttribute('aria-label');",
            Value::Null,
        )
        .await;
    assert!(
        label.as_str().unwrap().contains("1 failed"),
        "the chart's text for screen readers: {label}"
    );
    b.screenshot("overview").await;

    // A queue's page: its depths, its last hour, its rate limits.
    b.click("#queues tr[data-queue=parked] td.name button")
        .await;
    b.wait_text("#queue-name", "the queue page", |t| t == "parked")
        .await;
    b.wait_text(
        "#queue-fields dd[data-field=ready]",
        "its ready jobs",
        |t| t == "3",
    )
    .await;
    b.wait_text(
        "#queue-history tbody tr td.waiting",
        "the jobs waiting this minute",
        |t| t == "3",
    )
    .await;
    let enqueued = b
        .js(
            "return [...document.querySelectorAll('#queue-history td.enqueued')]
                .reduce((a, td) => a + Number(td.textContent), 0);",
            Value::Null,
        )
        .await;
    assert_eq!(enqueued, json!(3), "enqueued over the hour");
    b.wait_text("#queue-limits tbody td", "no limit", |t| {
        t.starts_with("none")
    })
    .await;
    b.screenshot("queue").await;

    // Workers: what each one holds, asked of the workers themselves.
    api.bind_example("sleep", "sleeper").await;
    let sleeping = api
        .submit(json!({ "task": "sleep", "input": { "ms": 60000 } }))
        .await;
    api.wait_started(&sleeping).await;
    b.click("#nav button[data-view=workers]").await;
    let held = format!("#held table.active tr[data-job=\"{sleeping}\"]");
    b.wait_text(&format!("{held} td.task"), "the running job", |t| {
        t == "sleep"
    })
    .await;
    b.wait_text(&format!("{held} td.fuel"), "its fuel", |t| !t.is_empty())
        .await;
    b.screenshot("workers").await;
    api.terminate(&sleeping).await;
    assert_eq!(api.wait(&sleeping).await["state"], "REVOKED");
    // The token left the address bar.
    let href = b.js("return location.href;", Value::Null).await;
    assert!(!href.as_str().unwrap().contains("token"), "{href}");

    // Schedules: fire the beat by hand; its job shows up live and succeeds.
    b.click("#nav button[data-view=schedules]").await;
    b.wait_text(
        "#schedules tr[data-beat=hourly-greet] td.enabled",
        "the beat",
        |t| t == "yes",
    )
    .await;
    b.screenshot("schedules").await;
    b.click("#schedules tr[data-beat=hourly-greet] button.fire")
        .await;
    let fired = b
        .wait_text("#schedule-message a", "the fired job", |t| !t.is_empty())
        .await;
    b.click("#nav button[data-view=jobs]").await;
    let row = format!("#live tr[data-job=\"{fired}\"]");
    b.wait_text(&format!("{row} td.state"), "the fired job's success", |t| {
        t == "SUCCESS"
    })
    .await;
    b.wait_text(&format!("{row} td.task"), "the fired job's task", |t| {
        t == "greet"
    })
    .await;
    b.screenshot("live-jobs").await;
    b.click(&format!("{row} td.id")).await;
    b.wait_text("#job-fields dd[data-field=state]", "the job detail", |t| {
        t == "SUCCESS"
    })
    .await;
    let outcome = b
        .wait_text("#job-outcome", "the result", |t| t.contains("Hello"))
        .await;
    assert!(outcome.contains("Hello, beat!"), "{outcome}");
    // What the run logged and used.
    b.wait_text("#job-log", "its log", |t| t.contains("INFO greeting beat"))
        .await;
    let memory = b
        .text("#job-fields dd[data-field=memory]")
        .await
        .unwrap_or_default();
    assert!(
        memory.ends_with("KiB") || memory.ends_with("MiB"),
        "{memory}"
    );
    let fuel = b
        .text("#job-fields dd[data-field=fuel]")
        .await
        .unwrap_or_default();
    assert!(fuel.parse::<u64>().is_ok_and(|f| f > 0), "{fuel}");
    b.screenshot("job").await;
    assert_eq!(
        b.text("#job-fields dd[data-field=beat]")
            .await
            .map(|t| t.starts_with("hourly-greet")),
        Some(true)
    );

    // Enqueue from the form; untrusted text stays text.
    let hostile = "<img src=x onerror=window.pwned=1>";
    b.click("#nav button[data-view=tasks]").await;
    b.wait_text("#tasks tr[data-task=greet] td.name", "the task list", |t| {
        t == "greet"
    })
    .await;
    b.screenshot("tasks").await;
    b.type_into("#enqueue-task", "greet").await;
    b.type_into("#enqueue-input", &json!({ "name": hostile }).to_string())
        .await;
    b.click("#enqueue-form button[type=submit]").await;
    // The (hidden) job view still holds the fired job until the enqueue is
    // answered and the new job opened: read nothing before it shows the new id.
    let enqueued = b
        .wait_text("#job-id", "the enqueued job's id", |t| {
            !t.is_empty() && t != fired
        })
        .await;
    b.wait_text(
        "#job-fields dd[data-field=state]",
        "the enqueued job",
        |t| t == "SUCCESS",
    )
    .await;
    let outcome = b
        .wait_text("#job-outcome", "the result", |t| t.contains("Hello"))
        .await;
    assert!(outcome.contains(hostile), "{outcome}");
    assert_eq!(b.text("#job-id").await, Some(enqueued));
    let probe = b
        .js(
            "return [document.querySelectorAll('img').length, typeof window.pwned];",
            Value::Null,
        )
        .await;
    assert_eq!(
        probe,
        json!([0, "undefined"]),
        "markup from job data was interpreted"
    );

    // Bad input in the form: a clear error, nothing sent; then the server's.
    b.click("#nav button[data-view=tasks]").await;
    b.type_into("#enqueue-input", r#"{"name": "#).await;
    b.click("#enqueue-form button[type=submit]").await;
    b.wait_text("#enqueue-error", "the JSON error", |t| {
        t.contains("not JSON")
    })
    .await;
    b.type_into("#enqueue-task", "no-such-task").await;
    b.type_into("#enqueue-input", "{}").await;
    b.click("#enqueue-form button[type=submit]").await;
    b.wait_text("#enqueue-error", "the server's error", |t| {
        t.contains("no-such-task") && t.contains("404")
    })
    .await;

    // Find jobs: a failed one by task and state, opened from the list,
    // replayed: it succeeds.
    let outage = api
        .submit(json!({ "task": "counter", "input": { "fail_first": 1 } }))
        .await;
    assert_eq!(api.wait(&outage).await["state"], "FAILURE");
    b.click("#nav button[data-view=find]").await;
    b.type_into("#find-task", "counter").await;
    b.js(
        "document.getElementById('find-state').value = arguments[0]; return null;",
        json!("FAILURE"),
    )
    .await;
    b.click("#find-form button[type=submit]").await;
    let found = format!("#found tr[data-job=\"{outage}\"]");
    b.wait_text(&format!("{found} td.state"), "the failed job, found", |t| {
        t == "FAILURE"
    })
    .await;
    b.wait_text("#find-message", "the count", |t| t == "1 job")
        .await;
    b.screenshot("find-jobs").await;
    // With the keyboard: Enter on the job's button opens it.
    b.press_enter(&format!("{found} td.id button")).await;
    b.wait_text("#job-id", "the found job, opened", |t| t == outage)
        .await;
    b.wait_text("#job-fields dd[data-field=state]", "its state", |t| {
        t == "FAILURE"
    })
    .await;
    b.wait_text("#job-outcome", "why it failed", |t| {
        t.contains("the downstream service is down")
    })
    .await;
    // Replayed from its page, it runs again, and succeeds.
    let first_end = b
        .wait_text("#job-fields dd[data-field=finished]", "its end", |t| {
            !t.is_empty()
        })
        .await;
    b.click("#job-replay").await;
    b.wait_text("#job-message", "the replay", |t| {
        t == "replayed: running again"
    })
    .await;
    b.wait_text(
        "#job-fields dd[data-field=finished]",
        "its second end",
        |t| !t.is_empty() && t != first_end,
    )
    .await;
    b.wait_text("#job-fields dd[data-field=state]", "its success", |t| {
        t == "SUCCESS"
    })
    .await;
    let outcome = b
        .wait_text("#job-outcome", "its result", |t| t.contains("run"))
        .await;
    let outcome: Value = serde_json::from_str(&outcome).unwrap();
    assert_eq!(outcome, json!({ "run": 2 }), "the second run succeeded");
    b.screenshot("job-replayed").await;

    // The default queue's page: both runs of the rate-limited task counted
    // against its limit, both failures in its last hour.
    b.click("#nav button[data-view=overview]").await;
    b.click("#queues tr[data-queue=default] td.name button")
        .await;
    b.wait_text("#queue-name", "the default queue", |t| t == "default")
        .await;
    b.wait_text(
        "#queue-limits tr[data-limit=\"task:counter\"] td.used",
        "the limit's use",
        |t| t == "2 of 100",
    )
    .await;
    assert_eq!(
        b.text("#queue-limits tr[data-limit=\"task:counter\"] td.rule")
            .await
            .as_deref(),
        Some("100/h")
    );
    b.wait_text(
        "#queue-chart-throughput .summary",
        "the failures of the hour",
        |t| t.contains(" 2 failed"),
    )
    .await;
    b.screenshot("queue-default").await;

    // A parent's page links its children, a child's its parent.
    let fan_out = guest_bytes("fan_out");
    api.upload(&fan_out).await;
    let (s, v) = api
        .bind(
            "fan-out",
            json!({ "module": ModuleHash::of(&fan_out), "grants": { "jobs": { "tasks": ["greet"] } } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let parent = api
        .submit(json!({ "task": "fan-out", "input": { "task": "greet", "count": 2 } }))
        .await;
    let done = api.wait(&parent).await;
    assert_eq!(done["state"], "SUCCESS", "{done}");
    let children: Vec<String> = done["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(children.len(), 2, "{done}");
    b.click("#nav button[data-view=find]").await;
    b.type_into("#find-task", "fan-out").await;
    b.js(
        "document.getElementById('find-state').value = ''; return null;",
        Value::Null,
    )
    .await;
    b.click("#find-form button[type=submit]").await;
    b.click(&format!("#found tr[data-job=\"{parent}\"] td.id button"))
        .await;
    b.wait_text("#job-id", "the parent", |t| t == parent).await;
    let shown = b
        .wait_text("#job-fields dd[data-field=children]", "its children", |t| {
            !t.is_empty()
        })
        .await;
    for c in &children {
        assert!(shown.contains(c.as_str()), "{c} not in {shown}");
    }
    b.click("#job-fields dd[data-field=children] button").await;
    b.wait_text("#job-id", "the first child", |t| t == children[0])
        .await;
    b.wait_text("#job-fields dd[data-field=parent]", "its parent", |t| {
        t == parent
    })
    .await;

    // Dead letters: listed, replayed.
    b.click("#nav button[data-view=dead]").await;
    b.wait_text(
        &format!("#dead-queues div[data-queue=default] tr[data-job=\"{dead_id}\"] td"),
        "the dead letter",
        |t| t == dead_id,
    )
    .await;
    b.screenshot("dead-letters").await;
    b.click("#dead-queues div[data-queue=default] button").await;
    b.wait_text("#dead-message", "the replay", |t| t.contains("replayed 1"))
        .await;

    // A submit token may look but not steer: the refusal is shown, nothing changes.
    b.type_into("#token", SUBMIT).await;
    b.click("#token-form button[type=submit]").await;
    b.click("#nav button[data-view=schedules]").await;
    b.click("#schedules tr[data-beat=hourly-greet] button.disable")
        .await;
    b.wait_text("#schedule-message", "the refusal", |t| {
        t.contains("admin needed")
    })
    .await;
    let (_, beat) = api
        .call(api.req(Method::GET, "/v1/schedules/hourly-greet", Some(ADMIN)))
        .await;
    assert_eq!(beat["enabled"], true, "{beat}");

    b.quit().await;
    api.stop().await;
}

/// `/v1/events` streams every job's state changes, filtered by queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_stream_every_jobs_state_changes() {
    let api = TestApi::start(None, "64MiB", true).await;
    api.bind_example("greet", "hello").await;

    let (s, v) = api
        .call(api.req(Method::GET, "/v1/events?queue=,", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = api.call(api.req(Method::GET, "/v1/events", None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let mut body = api
        .event_stream("/v1/events?queue=default")
        .await
        .bytes_stream();
    // One job on another queue (not shown), then one on default.
    api.enqueue(json!({ "task": "greet", "queue": "elsewhere" }))
        .await;
    let (_, v) = api
        .enqueue(json!({ "task": "greet", "input": { "name": "ev" } }))
        .await;
    let id = v["id"].as_str().unwrap().to_string();

    let mut text = String::new();
    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !states.iter().any(|s| s == "SUCCESS") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .unwrap_or_else(|_| panic!("no SUCCESS event; got {text}"))
            .expect("stream ended")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(cut) = text.find("\n\n") {
            let block: String = text.drain(..cut + 2).collect();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(str::trim);
            assert!(
                block.contains("event: job") || block.starts_with(':'),
                "{block}"
            );
            if let Some(data) = data {
                let ev: Value = serde_json::from_str(data).unwrap();
                assert_eq!(ev["queue"], "default", "filtered by queue: {ev}");
                if ev["id"] == id.as_str() {
                    states.push(ev["state"].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert!(states.contains(&"STARTED".to_string()), "{states:?}");

    // Shutting the server down ends the stream (a graceful shutdown does
    // not wait for the client to go away).
    let stopping = tokio::spawn(api.stop());
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the event stream outlived the server's shutdown"
    );
    stopping.await.unwrap();
}

/// The workflow view: a workflow's tree with each step's state, live, its
/// counts, a member job one click away, and Revoke.
/// A token in the fragment that is not valid percent-encoding is taken as
/// written (and refused by the API, which the page says) instead of
/// stopping the page's start; an encoded one is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_starts_with_a_token_it_cannot_decode() {
    let api = TestApi::start(None, "64MiB", true).await;
    let b = Browser::start().await;
    b.go(&format!("{}/dashboard#token=%E0%A4%A", api.url)).await;
    b.wait_text("#error", "the refusal of the token", |t| {
        t.contains("no valid token")
    })
    .await;
    // The page works: a good token typed in is used.
    b.type_into("#token", ADMIN).await;
    b.click("#token-form button[type=submit]").await;
    b.wait_text("#status", "a refresh", |t| t.starts_with("updated"))
        .await;
    // Percent-encoded in the fragment: decoded ("%61" is "a"), and kept
    // in place of the one the tab had.
    b.js(
        "sessionStorage.setItem('runner.token', 'stale'); return null;",
        json!(null),
    )
    .await;
    let encoded = format!("%61{}", &ADMIN[1..]);
    b.go(&format!("{}/dashboard?again#token={encoded}", api.url))
        .await;
    b.wait_text("#status", "a refresh", |t| t.starts_with("updated"))
        .await;
    let kept = b
        .js(
            "return sessionStorage.getItem('runner.token');",
            json!(null),
        )
        .await;
    assert_eq!(kept, json!(ADMIN));
    b.quit().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_shows_a_workflow_live_and_revokes_it() {
    let api = TestApi::start(None, "64MiB", true).await;
    api.bind_example("greet", "hello").await;
    api.bind_example("nap", "sleeper").await;
    let (s, v) = admin(
        &api,
        Method::POST,
        "/v1/workflows",
        json!({"workflow": {"chain": [
            {"group": [{"task": "greet", "input": {"name": "a"}}, {"task": "greet", "input": {"name": "b"}}]},
            {"task": "nap", "input": {"ms": 30000}},
            {"task": "greet", "input": {"name": "never"}}
        ]}}),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    let b = Browser::start().await;
    b.go(&format!("{}/dashboard#token={ADMIN}", api.url)).await;
    b.click("#nav button[data-view=workflow]").await;
    b.type_into("#wf-open", &id).await;
    b.press_enter("#wf-open").await;
    b.wait_text("#wf-id", "the workflow's id", |t| t == id)
        .await;
    // The group's members ended and the nap runs: 2 of 4 done, live.
    b.wait_text("#wf-fields dd[data-field=done]", "two members done", |t| {
        t == "2 / 4"
    })
    .await;
    b.wait_text(
        r#"#wf-tree li[data-path="workflow.chain[0]"] > .step-state"#,
        "the group succeeded",
        |t| t == "succeeded",
    )
    .await;
    b.wait_text(
        r#"#wf-tree li[data-path="workflow.chain[1]"] > .step-state"#,
        "the nap started",
        |t| t == "launched",
    )
    .await;
    assert_eq!(
        b.text(r#"#wf-tree li[data-path="workflow.chain[2]"] > .step-state"#)
            .await
            .as_deref(),
        Some("waiting")
    );
    assert_eq!(
        b.text("#wf-fields dd[data-field=state]").await.as_deref(),
        Some("running")
    );
    b.screenshot("workflow-running").await;
    // Revoke (terminating the nap): the workflow and the view say so.
    b.click("#wf-revoke").await;
    b.wait_text("#wf-message", "the answer", |t| t == "revoke: revoked")
        .await;
    b.wait_text("#wf-fields dd[data-field=state]", "revoked", |t| {
        t == "revoked"
    })
    .await;
    b.wait_text(
        r#"#wf-tree li[data-path="workflow.chain[1]"] > .step-state"#,
        "the nap ended",
        |t| t == "revoked",
    )
    .await;
    assert_eq!(
        b.text(r#"#wf-tree li[data-path="workflow.chain[2]"] > .step-state"#)
            .await
            .as_deref(),
        Some("waiting"),
        "the step after never started"
    );
    b.screenshot("workflow-revoked").await;
    // A member opens as a job, which links back to its workflow.
    b.click(r#"#wf-tree li[data-path="workflow.chain[1]"] > button.link"#)
        .await;
    b.wait_text("#job-fields dd[data-field=state]", "the nap's job", |t| {
        t == "REVOKED"
    })
    .await;
    b.click("#job-fields dd[data-field=workflow] button.link")
        .await;
    b.wait_text("#wf-id", "back to the workflow", |t| t == id)
        .await;
    b.quit().await;
    api.stop().await;
}

/// *Roll back to this* binds the binding of its row. Bound to one module
/// on queue `a`, then again on `b`, then to another module: the row of
/// the first binding binds the module on `a` again. Before, the button
/// sent the module alone, and the newest binding of that module (on `b`)
/// came back, with its settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_rolls_back_to_the_binding_of_its_row() {
    let api = TestApi::start(None, "64MiB", true).await;
    let hello = guest_bytes("hello");
    let sleeper = guest_bytes("sleeper");
    for bytes in [&hello, &sleeper] {
        let (s, v) = api.upload(bytes).await;
        assert!(s.is_success(), "{v}");
    }
    for (module, queue) in [(&hello, "a"), (&hello, "b"), (&sleeper, "a")] {
        let (s, v) = api
            .bind(
                "flip",
                json!({ "module": ModuleHash::of(module), "queue": queue }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let b = Browser::start().await;
    b.go(&format!("{}/dashboard#token={ADMIN}", api.url)).await;
    b.click("#nav button[data-view=tasks]").await;
    b.wait_text("#tasks tr[data-task=flip] td.name", "the task", |t| {
        t == "flip"
    })
    .await;
    b.click("#tasks tr[data-task=flip] button").await;
    // The current binding, then the history, newest first.
    let first = "#history-table tbody tr:nth-child(3)";
    b.wait_text(
        &format!("{first} td:nth-child(2)"),
        "the first binding's row",
        |t| t == "a",
    )
    .await;
    b.click(&format!("{first} button")).await;
    b.wait_text("#history-message", "the rollback", |t| t.contains("again"))
        .await;
    let (s, v) = api
        .call(api.req(Method::GET, "/v1/tasks/flip", Some(ADMIN)))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["binding"]["module"], ModuleHash::of(&hello).to_string());
    assert_eq!(v["binding"]["queue"], "a", "{v}");
    b.quit().await;
    api.stop().await;
}

/// On a server with `[server] open = true` (no token anywhere) the live
/// view follows the event stream; and once the stream was away, a job
/// that ended meanwhile shows its end (read again on reconnecting), not
/// the state it had. Before, the page never opened the stream without a
/// token, and a row kept its last state for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_events_on_an_open_server_and_reads_again_after_a_gap() {
    let api =
        TestApi::start_configured(crate::support::sandbox(), None, "64MiB", true, false, |c| {
            c.server.open = true
        })
        .await;
    api.bind_example("nap", "sleeper").await;
    let b = Browser::start().await;
    b.go(&format!("{}/dashboard", api.url)).await;
    b.click("#nav button[data-view=jobs]").await;
    b.wait_text("#live-state", "the stream, without a token", |t| {
        t == "(connected)"
    })
    .await;
    let (s, v) = api
        .enqueue(json!({ "task": "nap", "input": { "ms": 1500 } }))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let row = format!("#live tr[data-job=\"{id}\"] td.state");
    b.wait_text(&row, "the job, running", |t| t == "STARTED")
        .await;
    // The stream goes away (a new one waits until let through), and the
    // job ends meanwhile: its event is lost to the page.
    b.js(
        "window.realFetch = window.fetch;
         window.fetch = (url, init) => String(url).startsWith('/v1/events')
           ? new Promise((_, reject) => init.signal.addEventListener('abort',
               () => reject(new DOMException('held', 'AbortError'))))
           : window.realFetch(url, init);
         state.stream.abort();
         return null;",
        json!(null),
    )
    .await;
    assert_eq!(api.wait(&id).await["state"], "SUCCESS");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.text(&row).await.as_deref(), Some("STARTED"));
    b.js(
        "window.fetch = window.realFetch; state.stream.abort(); return null;",
        json!(null),
    )
    .await;
    b.wait_text(&row, "the end, read again", |t| t == "SUCCESS")
        .await;
    b.quit().await;
    api.stop().await;
}
