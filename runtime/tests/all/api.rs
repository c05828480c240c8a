//! The HTTP API end to end over real HTTP on a loopback port: a server and a
//! worker in this process, on the embedded broker or a real redis-server.

use std::time::Duration;

use reqwest::StatusCode;
use runner::app::{self, Core};
use runner::config::Config;
use runner::sandbox::host::HostServices;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::redis_support::RedisServer;
use crate::support::{
    constant_output_component, core_module, guest_bytes, other_world_component, sandbox,
};

pub(crate) const ADMIN: &str = "admin-token-0123456789abcdef";
pub(crate) const SUBMIT: &str = "submit-token-0123456789abcdef";

pub struct TestApi {
    pub url: String,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl TestApi {
    /// A server (and a worker unless `worker` is false) on `redis` or the
    /// embedded broker.
    pub async fn start(redis: Option<String>, max_body: &str, worker: bool) -> TestApi {
        Self::start_with(redis, max_body, worker, false).await
    }

    /// [`start`](Self::start), with the scheduler loop too when `scheduler`.
    pub async fn start_with(
        redis: Option<String>,
        max_body: &str,
        worker: bool,
        scheduler: bool,
    ) -> TestApi {
        Self::start_in(sandbox(), redis, max_body, worker, scheduler).await
    }

    /// [`start_with`](Self::start_with) on `sandbox`.
    pub async fn start_in(
        sandbox: runner::sandbox::Sandbox,
        redis: Option<String>,
        max_body: &str,
        worker: bool,
        scheduler: bool,
    ) -> TestApi {
        Self::start_configured(sandbox, redis, max_body, worker, scheduler, |_| {}).await
    }

    /// [`start_in`](Self::start_in) with `edit` applied to the config.
    pub async fn start_configured(
        sandbox: runner::sandbox::Sandbox,
        redis: Option<String>,
        max_body: &str,
        worker: bool,
        scheduler: bool,
        edit: impl FnOnce(&mut Config),
    ) -> TestApi {
        let mut config = Config::default();
        config.broker.redis_url = redis;
        config.server.max_body = max_body.to_string();
        config.auth.admin.push(ADMIN.into());
        config.auth.submit.push(SUBMIT.into());
        config.worker.concurrency = Some(4);
        // A fixed prefetch: the inspect and priority tests count what a
        // busy worker holds ahead (the adaptive one hands it back).
        config.worker.prefetch = Some(4);
        edit(&mut config);
        config.check().unwrap();
        let core = Core::open(&config, sandbox).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut handles = Vec::new();
        if worker {
            // kv in memory: tasks that keep state across runs (`counter`).
            let services = HostServices {
                kv: Some(std::sync::Arc::new(
                    runner_host_fns::kv::KvService::in_memory(),
                )),
                ..HostServices::default()
            };
            let w = core.worker(&config, services).unwrap();
            let f = stopped(rx.clone());
            handles.push(tokio::spawn(async move {
                w.run(f).await.unwrap();
            }));
        }
        if scheduler {
            let sched = core.scheduler.clone();
            let f = stopped(rx.clone());
            handles.push(tokio::spawn(async move { sched.run(f).await }));
        }
        let auth = app::auth_from(&config).unwrap();
        let ctx = app::api_context(&core, &config, auth).unwrap();
        let f = stopped(rx.clone());
        handles.push(tokio::spawn(async move {
            runner::api::serve(listener, ctx, f).await.unwrap();
        }));
        TestApi {
            url,
            http: crate::support::http_client(),
            stop,
            handles,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }

    pub fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.url));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn call(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let res = rb.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn upload(&self, bytes: &[u8]) -> (StatusCode, Value) {
        self.call(
            self.req(
                reqwest::Method::PUT,
                &format!("/v1/modules/{}", module_hash(bytes)),
                Some(ADMIN),
            )
            .body(bytes.to_vec()),
        )
        .await
    }

    pub async fn bind(&self, name: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            self.req(
                reqwest::Method::PUT,
                &format!("/v1/tasks/{name}"),
                Some(ADMIN),
            )
            .json(&body),
        )
        .await
    }

    /// Opens a server-sent event stream: 200 with `text/event-stream`.
    pub async fn event_stream(&self, path: &str) -> reqwest::Response {
        let res = self
            .req(reqwest::Method::GET, path, Some(SUBMIT))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap();
        assert!(ct.starts_with("text/event-stream"), "{path}: {ct}");
        res
    }

    /// Uploads an example and binds `name` to it with the defaults.
    pub async fn bind_example(&self, name: &str, example: &str) {
        let bytes = guest_bytes(example);
        let (s, v) = self.upload(&bytes).await;
        assert!(s.is_success(), "{v}");
        let (s, v) = self
            .bind(name, json!({ "module": module_hash(&bytes) }))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    pub async fn enqueue(&self, body: Value) -> (StatusCode, Value) {
        self.call(
            self.req(reqwest::Method::POST, "/v1/jobs", Some(SUBMIT))
                .json(&body),
        )
        .await
    }

    /// Enqueues `body` (202) and returns the job's id.
    pub async fn submit(&self, body: Value) -> String {
        let (s, v) = self.enqueue(body).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// `GET /v1/jobs/{id}{query}`: the job (200).
    async fn job(&self, id: &str, query: &str) -> Value {
        let (s, v) = self
            .call(self.req(
                reqwest::Method::GET,
                &format!("/v1/jobs/{id}{query}"),
                Some(SUBMIT),
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// The job once it has ended (within 30 s).
    pub async fn wait(&self, id: &str) -> Value {
        self.job(id, "?wait=30s").await
    }

    /// Once the job runs (within 60 s).
    pub async fn wait_started(&self, id: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.state(id).await != "STARTED" {
            assert!(std::time::Instant::now() < deadline, "{id} never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /v1/jobs/{id}/revoke` with `terminate` (200).
    pub async fn terminate(&self, id: &str) {
        let (s, v) = self
            .call(
                self.req(
                    reqwest::Method::POST,
                    &format!("/v1/jobs/{id}/revoke"),
                    Some(ADMIN),
                )
                .json(&json!({ "terminate": true })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    /// The job's state now.
    pub async fn state(&self, id: &str) -> String {
        self.job(id, "").await["state"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Two tests running `body(&api)`: on the embedded broker and on a
/// redis-server of their own, each with a worker.
macro_rules! on_both_brokers {
    ($embedded:ident, $redis:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $embedded() {
            let api = TestApi::start(None, "64MiB", true).await;
            $body(&api).await;
            api.stop().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $redis() {
            let redis = RedisServer::start();
            let api = TestApi::start(Some(redis.url()), "64MiB", true).await;
            $body(&api).await;
            api.stop().await;
        }
    };
}

pub(crate) use on_both_brokers;

pub(crate) fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn upload_bind_enqueue_wait(api: &TestApi) {
    let hello = guest_bytes("hello");
    let (s, v) = api.upload(&hello).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["hash"], module_hash(&hello));
    assert!(
        v["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().starts_with("runner:task/context"))
    );
    // Idempotent: the same bytes again are 200, not a second module.
    let (s, v) = api.upload(&hello).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["created"], false);

    let (s, v) = api
        .bind(
            "greet",
            json!({ "module": module_hash(&hello), "queue": "default" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .enqueue(json!({ "task": "greet", "input": { "name": "API" } }))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let job = api.wait(&id).await;
    assert_eq!(job["state"], "SUCCESS", "{job}");
    assert!(job["result"].to_string().contains("API"), "{job}");
    assert_eq!(job["module"], module_hash(&hello));
    // What its run logged and used is kept with it.
    assert_eq!(job["log"][0]["level"], "INFO", "{job}");
    assert_eq!(job["log"][0]["message"], "greeting API", "{job}");
    assert!(job["fuel_used"].as_u64().is_some_and(|f| f > 0), "{job}");
    assert!(
        job["memory_peak_bytes"]
            .as_u64()
            .is_some_and(|m| m >= 65536),
        "{job}"
    );

    // Listed.
    let (s, v) = api
        .call(api.req(reqwest::Method::GET, "/v1/modules", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, v) = api
        .call(api.req(reqwest::Method::GET, "/v1/queues", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v.as_array().unwrap().iter().any(|q| q["name"] == "default"),
        "{v}"
    );
    let (s, v) = api
        .call(api.req(reqwest::Method::GET, "/v1/workers", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
}

on_both_brokers!(
    api_upload_bind_enqueue_wait_on_the_embedded_broker,
    api_upload_bind_enqueue_wait_on_redis,
    upload_bind_enqueue_wait
);

/// Re-binding under load: no job fails; jobs enqueued before the re-bind
/// run the old module, jobs after it the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_rebind_under_load_keeps_old_jobs_on_the_old_module() {
    let redis = RedisServer::start();
    let api = TestApi::start(Some(redis.url()), "64MiB", true).await;
    // Two modules of one task, told apart by their output (`1` or `2`).
    let v1 = constant_output_component("1");
    let v2 = constant_output_component("2");
    for m in [&v1, &v2] {
        let (s, v) = api.upload(m).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    assert_eq!(
        api.bind("versioned", json!({ "module": module_hash(&v1) }))
            .await
            .0,
        StatusCode::OK
    );

    let batch = |n: usize| json!({ "jobs": (0..n).map(|_| json!({"task": "versioned"})).collect::<Vec<_>>() });
    let send = |body: Value| {
        api.call(
            api.req(reqwest::Method::POST, "/v1/jobs/batch", Some(SUBMIT))
                .json(&body),
        )
    };
    let mut before = Vec::new();
    for _ in 0..4 {
        let (s, v) = send(batch(100)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        before.extend(
            v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
    }
    // Re-bind while the worker is busy with the first jobs.
    let (s, v) = api
        .bind("versioned", json!({ "module": module_hash(&v2) }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["history"][0]["module"], module_hash(&v1));
    let mut after = Vec::new();
    for _ in 0..2 {
        let (s, v) = send(batch(100)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        after.extend(
            v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string()),
        );
    }
    for (ids, expect) in [(&before, 1), (&after, 2)] {
        for id in ids.iter() {
            let job = api.wait(id).await;
            assert_eq!(job["state"], "SUCCESS", "{job}");
            assert_eq!(job["result"], expect, "{job}");
        }
    }
    // Rollback is one call.
    let (s, v) = api
        .call(api.req(
            reqwest::Method::POST,
            "/v1/tasks/versioned/rollback",
            Some(ADMIN),
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["binding"]["module"], module_hash(&v1));
    let (_, v) = api.enqueue(json!({ "task": "versioned" })).await;
    let job = api.wait(v["id"].as_str().unwrap()).await;
    assert_eq!(job["result"], 1, "{job}");
    api.stop().await;
}

/// A countdown or an expiry past any date is a 400 naming the field; it
/// once overflowed the producer's time arithmetic (a panic, a dropped
/// connection), alone and in a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_delays_past_any_date_are_refused_by_name() {
    let api = TestApi::start(None, "1MiB", false).await;
    for (body, field) in [
        (json!({ "task": "t", "countdown": 1e300 }), "countdown"),
        (json!({ "task": "t", "expires_in": 1e300 }), "expires_in"),
        // Once made the store script fail after it had taken the job out
        // of its queue (the job was then in no list, PENDING forever).
        (
            json!({ "task": "t", "result_ttl": 10_u64.pow(16) }),
            "result_ttl",
        ),
        // Dates past the longest delay; once stored as due in year 9999.
        (json!({ "task": "t", "eta": "9999-12-31T00:00:00Z" }), "eta"),
        (
            json!({ "task": "t", "expires": "9999-12-31T00:00:00Z" }),
            "expires",
        ),
    ] {
        let (s, v) = api.enqueue(body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains(field), "{v}");
        let (s, v) = api
            .call(
                api.req(reqwest::Method::POST, "/v1/jobs/batch", Some(SUBMIT))
                    .json(&json!({ "jobs": [body] })),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains(field), "{v}");
    }
}

/// Operators set the ceilings: a submit token may only lower what the
/// task's binding allows, and rate limits, module pinning and queues that
/// are not configured are an admin's. Every number has a maximum, for
/// admins too. Before, each of these was a 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_a_submit_token_may_only_lower_what_the_binding_allows() {
    let api = TestApi::start(None, "1MiB", false).await;
    let hello = guest_bytes("hello");
    let (s, v) = api.upload(&hello).await;
    assert!(s.is_success(), "{v}");
    let hash = module_hash(&hello);
    let (s, v) = api
        .bind(
            "capped",
            json!({
                "module": hash, "queue": "mail", "time_limit": "5s", "fuel": 1000,
                "rate_limit": "10/m",
                "retry": { "max_retries": 2, "backoff_base_ms": 1000, "retry_on": ["trap"] },
            }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let as_token = |token: &'static str, extra: Value| {
        let mut body = json!({ "task": "capped" });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        api.call(
            api.req(reqwest::Method::POST, "/v1/jobs", Some(token))
                .json(&body),
        )
    };

    // Refused to a submit token, naming the field; an admin may.
    for (extra, field) in [
        (
            json!({ "limits": { "time_limit_ms": 60_000 } }),
            "limits.time_limit_ms",
        ),
        (json!({ "limits": { "fuel": 1_000_000 } }), "limits.fuel"),
        // The binding sets no memory: the worker's default (64 MiB) is the ceiling.
        (
            json!({ "limits": { "memory_bytes": 1_u64 << 30 } }),
            "limits.memory_bytes",
        ),
        (json!({ "rate_limit": "1000/s" }), "rate_limit"),
        (json!({ "module": hash }), "module"),
        (json!({ "queue": "anywhere" }), "queue"),
        (
            json!({ "retry": { "max_retries": 3, "backoff_base_ms": 1000 } }),
            "retry.max_retries",
        ),
        (
            json!({ "retry": { "max_retries": 1, "backoff_base_ms": 0 } }),
            "retry.backoff_base_ms",
        ),
        (
            json!({ "retry": { "max_retries": 1, "backoff_base_ms": 1000, "retry_on": ["fail"] } }),
            "retry.retry_on",
        ),
        // The task's retries wait up to 600 s (the default cap): a cap of
        // 0 makes every wait the base (1 s).
        (
            json!({ "retry": { "max_retries": 1, "backoff_base_ms": 1000, "backoff_cap_ms": 0 } }),
            "retry.backoff_cap_ms",
        ),
    ] {
        let (s, v) = as_token(SUBMIT, extra.clone()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{extra}: {v}");
        assert!(message(&v).starts_with(field), "{extra}: {v}");
        let (s, v) = as_token(ADMIN, extra.clone()).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{extra}: {v}");
    }
    // Jitter shortens waits (to between half and all of each): refused when
    // the task's retries have none.
    let (s, v) = api
        .bind(
            "steady",
            json!({ "module": hash, "retry": { "max_retries": 2, "backoff_base_ms": 1000, "jitter": false } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for (jitter, status) in [(true, StatusCode::FORBIDDEN), (false, StatusCode::ACCEPTED)] {
        let body = json!({ "task": "steady",
            "retry": { "max_retries": 1, "backoff_base_ms": 1000, "jitter": jitter } });
        let (s, v) = api
            .call(
                api.req(reqwest::Method::POST, "/v1/jobs", Some(SUBMIT))
                    .json(&body),
            )
            .await;
        assert_eq!(s, status, "{v}");
        if jitter {
            assert!(message(&v).starts_with("retry.jitter"), "{v}");
        }
    }
    // In a batch, the job is named.
    let (s, v) = api
        .call(
            api.req(reqwest::Method::POST, "/v1/jobs/batch", Some(SUBMIT))
                .json(&json!({ "jobs": [
                    { "task": "capped" },
                    { "task": "capped", "rate_limit": "1000/s" },
                ] })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(message(&v).starts_with("jobs[1]: rate_limit"), "{v}");
    // So is a job whose module is unknown (it was not, before).
    let unknown = format!("sha256:{}", "0".repeat(64));
    let (s, v) = api
        .call(
            api.req(reqwest::Method::POST, "/v1/jobs/batch", Some(ADMIN))
                .json(&json!({ "jobs": [
                    { "task": "capped" },
                    { "module": unknown },
                ] })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(message(&v).starts_with("jobs[1]: unknown module"), "{v}");

    // Lowering is anyone's; so is the task's own queue, `default` and a
    // configured one.
    for extra in [
        json!({ "limits": { "time_limit_ms": 1000, "fuel": 10, "memory_bytes": 1_u64 << 20 } }),
        json!({ "retry": { "max_retries": 1, "backoff_base_ms": 5000, "retry_on": ["trap"] } }),
        json!({ "retry": { "max_retries": 0, "backoff_base_ms": 0 } }),
        json!({ "queue": "mail" }),
        json!({ "queue": "default" }),
    ] {
        let (s, v) = as_token(SUBMIT, extra.clone()).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{extra}: {v}");
    }

    // Above a maximum (or no time at all): 400 naming the field and the
    // bound, for anyone.
    for (extra, field, max) in [
        (
            json!({ "limits": { "time_limit_ms": 0 } }),
            "limits.time_limit_ms",
            "below its minimum of 1",
        ),
        (
            json!({ "limits": { "time_limit_ms": 10_u64.pow(12) } }),
            "limits.time_limit_ms",
            "86400000",
        ),
        (
            json!({ "limits": { "fuel": u64::MAX } }),
            "limits.fuel",
            "1000000000000000",
        ),
        (
            json!({ "limits": { "memory_bytes": 1_u64 << 40 } }),
            "limits.memory_bytes",
            "4294967296",
        ),
        (
            json!({ "retry": { "max_retries": 4_000_000_000_u32 } }),
            "retry.max_retries",
            "1000",
        ),
        (
            json!({ "retry": { "backoff_base_ms": u64::MAX } }),
            "retry.backoff_base_ms",
            "",
        ),
    ] {
        for token in [SUBMIT, ADMIN] {
            let (s, v) = as_token(token, extra.clone()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{extra}: {v}");
            let m = message(&v);
            assert!(m.starts_with(field) && m.contains(max), "{extra}: {v}");
        }
    }
    // The runner's own idempotency keys are nobody's to send.
    for token in [SUBMIT, ADMIN] {
        let (s, v) = as_token(
            token,
            json!({ "idempotency_key": "beat:nightly:2026-01-01T00:00:00Z" }),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("idempotency key"), "{v}");
    }
    // A binding above a maximum is refused when it is made.
    let (s, v) = api
        .bind("greedy", json!({ "module": hash, "time_limit": "1000d" }))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("limits.time_limit_ms"), "{v}");
    let (s, v) = api
        .bind(
            "greedy",
            json!({ "module": hash, "retry": { "max_retries": 1_000_000 } }),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("retry.max_retries"), "{v}");
    api.stop().await;
}

/// `retry` and `limits` given as arrays (serde's fields by position) are
/// refused by beats and workflow steps as by `POST /v1/jobs`: before, a
/// beat stored `"limits": [1000]` as a time limit of 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_an_object_field_given_as_an_array_is_refused() {
    let api = TestApi::start_with(None, "1MiB", false, true).await;
    api.bind_example("greet", "hello").await;
    let send = |method: reqwest::Method, path: &'static str, body: serde_json::Value| {
        api.call(api.req(method, path, Some(ADMIN)).json(&body))
    };
    for field in ["retry", "limits"] {
        let mut beat = serde_json::json!({"task": "greet", "every": "1h"});
        beat[field] = serde_json::json!([1000]);
        let (s, v) = send(reqwest::Method::PUT, "/v1/schedules/b", beat).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("a JSON object"), "{v}");
        let mut step = serde_json::json!({"task": "greet"});
        step[field] = serde_json::json!([1000]);
        let body = serde_json::json!({"workflow": {"chain": [step]}});
        let (s, v) = send(reqwest::Method::POST, "/v1/workflows", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("a JSON object"), "{v}");
    }
    let (s, v) = send(
        reqwest::Method::GET,
        "/v1/schedules",
        serde_json::json!(null),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(0), "nothing stored: {v}");
    // As objects, both are taken.
    let beat = serde_json::json!({"task": "greet", "every": "1h",
        "retry": {"max_retries": 1}, "limits": {"time_limit_ms": 1000}});
    let (s, v) = send(reqwest::Method::PUT, "/v1/schedules/b", beat).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let body = serde_json::json!({"workflow": {"chain": [{"task": "greet",
        "retry": {"max_retries": 1}, "limits": {"time_limit_ms": 1000}}]}});
    let (s, v) = send(reqwest::Method::POST, "/v1/workflows", body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    api.stop().await;
}

/// A query parameter an endpoint does not take (a misspelling) is a 400
/// naming it, not ignored: `?terminated=true` revoked without stopping the
/// running jobs, and `?timeout=30s` answered at once. A bad queue name in
/// the events filter is a 400 too, not a stream that never sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_a_query_parameter_it_does_not_take_is_refused() {
    let api = TestApi::start(None, "1MiB", false).await;
    let id = runner::queue::JobId::new();
    // (A stream taken instead of refused would never end: cut short.)
    let get = |path: String| {
        api.call(
            api.req(reqwest::Method::GET, &path, Some(ADMIN))
                .timeout(std::time::Duration::from_secs(10)),
        )
    };
    for (path, named) in [
        (format!("/v1/jobs/{id}?timeout=30s"), "timeout"),
        (format!("/v1/workflows/{id}?wiat=1s"), "wiat"),
        ("/v1/queues/default/dead?limt=5".to_string(), "limt"),
        ("/v1/queues/default/scheduled?max=5".to_string(), "max"),
        ("/v1/events?queues=default".to_string(), "queues"),
        ("/v1/events?queue=a%20b".to_string(), "spaces"),
    ] {
        let (s, v) = get(path.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert!(message(&v).contains(named), "{path}: {v}");
    }
    let (s, v) = api
        .call(
            api.req(
                reqwest::Method::POST,
                &format!("/v1/workflows/{id}/revoke?terminated=true"),
                Some(ADMIN),
            )
            .json(&serde_json::json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("terminated"), "{v}");
    // Spelled right, the same requests are taken.
    let (s, v) = get(format!("/v1/jobs/{id}?wait=10ms")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = get("/v1/queues/default/dead?limit=5".to_string()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            api.req(
                reqwest::Method::POST,
                &format!("/v1/workflows/{id}/revoke?terminate=true"),
                Some(ADMIN),
            )
            .json(&serde_json::json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bad_input_gets_the_right_status_and_says_what_is_wrong() {
    let api = TestApi::start(None, "1MiB", false).await;
    let hello = guest_bytes("hello");
    let put = |path: String, token: Option<&'static str>, body: Vec<u8>| {
        api.call(api.req(reqwest::Method::PUT, &path, token).body(body))
    };

    // Hash mismatch: 400 naming both hashes.
    let other = module_hash(b"something else");
    let (s, v) = put(format!("/v1/modules/{other}"), Some(ADMIN), hello.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        message(&v).contains(&module_hash(&hello)) && message(&v).contains(&other),
        "{v}"
    );
    // A malformed hash.
    let (s, v) = put("/v1/modules/sha256:abc".into(), Some(ADMIN), hello.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("64 hex digits"), "{v}");

    // Not wasm, a core module, another world: 422 saying which.
    let (s, v) = api.upload(b"#!/bin/sh\necho hi\n").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(message(&v).contains("not a WebAssembly file"), "{v}");
    let (s, v) = api.upload(&core_module()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        message(&v).contains("core WebAssembly module, not a component"),
        "{v}"
    );
    let (s, v) = api.upload(&other_world_component()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        message(&v).contains("missing the export") && message(&v).contains("run"),
        "{v}"
    );

    // An import the grants do not allow: 422 naming it; with the grant, bound.
    let kv_guard = guest_bytes("kv_guard");
    assert_eq!(api.upload(&kv_guard).await.0, StatusCode::CREATED);
    let (s, v) = api
        .bind("guard", json!({ "module": module_hash(&kv_guard) }))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(message(&v).contains("runner:task/kv@0.1.0"), "{v}");
    let (s, v) = api
        .bind(
            "guard",
            json!({ "module": module_hash(&kv_guard), "grants": { "kv": {} } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Bad grants and bad names.
    let (s, v) = api
        .bind(
            "guard",
            json!({ "module": module_hash(&kv_guard), "grants": { "kv": {}, "shell": true } }),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("shell"), "{v}");
    let (s, v) = api
        .bind(
            "bad%20name",
            json!({ "module": module_hash(&kv_guard), "grants": { "kv": {} } }),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(message(&v).contains("task name"), "{v}");
    // Binding a module never uploaded: 404.
    let (s, v) = api.bind("ghost", json!({ "module": other })).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // Oversized body: 413 with the limit.
    let big = vec![0u8; 2 * 1024 * 1024];
    let (s, v) = api
        .call(
            api.req(reqwest::Method::POST, "/v1/modules", Some(ADMIN))
                .body(big),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        message(&v).contains("1 MiB") && message(&v).contains("1048576"),
        "{v}"
    );

    // Unknown task, unknown job: 404. A bad id: 400.
    let (s, v) = api.enqueue(json!({ "task": "nope" })).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(message(&v).contains("nope"), "{v}");
    let missing = "0190a0a0-0000-7000-8000-000000000000";
    let (s, _) = api
        .call(api.req(
            reqwest::Method::GET,
            &format!("/v1/jobs/{missing}"),
            Some(SUBMIT),
        ))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .call(api.req(reqwest::Method::GET, "/v1/jobs/not-a-uuid", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .call(api.req(reqwest::Method::GET, "/v1/tasks/nope", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Malformed JSON: 400 with line and column.
    let (s, v) = api
        .call(
            api.req(reqwest::Method::POST, "/v1/jobs", Some(SUBMIT))
                .header("content-type", "application/json")
                .body("{\n  \"task\": \"guard\",\n  \"input\": {,}\n}"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        message(&v).contains("line 3") && message(&v).contains("column"),
        "{v}"
    );
    // An unknown field is named.
    let (s, v) = api.enqueue(json!({ "task": "guard", "inptu": {} })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("inptu"), "{v}");

    // Tokens: none or unknown is 401; submit on an admin route is 403.
    let (s, v) = api
        .call(api.req(reqwest::Method::GET, "/v1/modules", None))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = api
        .call(api.req(
            reqwest::Method::GET,
            "/v1/modules",
            Some("wrong-token-0123456789"),
        ))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = put(
        format!("/v1/modules/{}", module_hash(&hello)),
        Some(SUBMIT),
        hello.clone(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _) = api
        .call(
            api.req(reqwest::Method::POST, "/v1/jobs", None)
                .json(&json!({"task": "guard"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Nothing was stored by the refused requests.
    let (_, v) = api
        .call(api.req(reqwest::Method::GET, "/v1/modules", Some(ADMIN)))
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");

    // Health needs no token.
    let (s, _) = api
        .call(api.req(reqwest::Method::GET, "/healthz", None))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .call(api.req(reqwest::Method::GET, "/readyz", None))
        .await;
    assert_eq!(s, StatusCode::OK);
    api.stop().await;
}

/// A request refused before its body is read (no token, the wrong token,
/// an unknown route, a body over the limit) gets its answer, whatever the
/// size of the body: the server reads the rest of the body before it
/// answers. (It closed with the body still arriving, and the client,
/// still sending, got "connection reset" instead of a 401 or a 403.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_a_request_refused_before_its_body_is_read_is_answered() {
    let api = TestApi::start(None, "16MiB", false).await;
    let body = vec![7u8; 12 * 1024 * 1024];
    let hash = module_hash(&body);
    let cases: [(reqwest::Method, String, Option<&'static str>, StatusCode); 4] = [
        (
            reqwest::Method::PUT,
            format!("/v1/modules/{hash}"),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            reqwest::Method::PUT,
            format!("/v1/modules/{hash}"),
            Some(SUBMIT),
            StatusCode::FORBIDDEN,
        ),
        (
            reqwest::Method::POST,
            "/v1/no-such-route".into(),
            Some(ADMIN),
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::PUT,
            "/v1/modules/sha256:abc".into(),
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for round in 0..3 {
        for (method, path, token, want) in &cases {
            let res = api
                .req(method.clone(), path, *token)
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path} (round {round}): {e:?}"));
            assert_eq!(res.status(), *want, "{method} {path}");
            let v: Value = res.json().await.unwrap();
            assert!(!message(&v).is_empty(), "{v}");
        }
    }
    // Over the limit, with no length declared (sent in chunks): a 413.
    let chunks = futures::stream::iter(
        (0..32).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 1024 * 1024]))),
    );
    let (s, v) = api
        .call(
            api.req(reqwest::Method::POST, "/v1/modules", Some(ADMIN))
                .body(reqwest::Body::wrap_stream(chunks)),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_readyz_is_503_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let api = TestApi::start(Some(redis.url()), "64MiB", false).await;
    let (s, _) = api
        .call(api.req(reqwest::Method::GET, "/readyz", None))
        .await;
    assert_eq!(s, StatusCode::OK);
    redis.stop();
    let (s, v) = api
        .call(api.req(reqwest::Method::GET, "/readyz", None))
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (s, v) = api.enqueue(json!({ "module": module_hash(b"x") })).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    api.stop().await;
}

/// Events are pushed: the stream shows STARTED, progress and the final
/// record with the result, then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_job_events_stream_state_changes_until_the_end() {
    let api = TestApi::start(None, "64MiB", true).await;
    let sleeper = guest_bytes("sleeper");
    api.upload(&sleeper).await;
    assert_eq!(
        api.bind("sleep", json!({ "module": module_hash(&sleeper) }))
            .await
            .0,
        StatusCode::OK
    );
    let (_, v) = api
        .enqueue(json!({ "task": "sleep", "input": { "ms": 300 }, "countdown": 0.3 }))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let res = api.event_stream(&format!("/v1/jobs/{id}/events")).await;
    let body = tokio::time::timeout(Duration::from_secs(30), res.text())
        .await
        .expect("the stream ends after the final state")
        .unwrap();
    let datas: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect();
    let states: Vec<&str> = datas.iter().filter_map(|d| d["state"].as_str()).collect();
    assert_eq!(states.first(), Some(&"PENDING"), "{body}");
    assert!(states.contains(&"STARTED"), "{body}");
    assert_eq!(states.last(), Some(&"SUCCESS"), "{body}");
    assert_eq!(
        datas.last().unwrap()["result"]["slept_ms"]
            .as_u64()
            .map(|ms| ms >= 300),
        Some(true),
        "{body}"
    );
    api.stop().await;
}

/// What a run writes to stdout and stderr reaches its record's log, a
/// line at a time, each line cut at 4 KiB. A last line longer than the
/// record's whole log once made the worker panic building the record, so
/// a run that succeeded was retried as "infrastructure".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_a_runs_long_output_lines_are_cut_in_its_record() {
    let api = TestApi::start(None, "64MiB", true).await;
    let printer = guest_bytes("printer");
    api.upload(&printer).await;
    let (s, v) = api
        .bind(
            "print",
            json!({ "module": module_hash(&printer), "retry": { "max_retries": 0 } }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let long = "o".repeat(40_000);
    for input in [
        json!({ "stdout": long }),
        json!({ "stdout": "first\n", "stderr": format!("{long}\n") }),
    ] {
        let (s, v) = api
            .enqueue(json!({ "task": "print", "input": input }))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let job = api.wait(v["id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "SUCCESS", "{job}");
        assert_eq!(job["result"], json!({ "ok": true }), "{job}");
        let log = job["log"].as_array().unwrap();
        let last = log.last().unwrap()["message"].as_str().unwrap();
        let stream = if input["stderr"].is_null() {
            "stdout"
        } else {
            "stderr"
        };
        assert!(last.starts_with(&format!("[{stream}] ooo")), "{job}");
        assert!(
            last.ends_with("more bytes]") && last.len() <= 4096,
            "{last}"
        );
        if stream == "stderr" {
            assert_eq!(log[log.len() - 2]["message"], "[stdout] first", "{job}");
        }
    }
    api.stop().await;
}

/// A job that expires while it waits, with no worker to settle it: a long
/// poll returns it EXPIRED at its expiry, and its event stream sends the
/// EXPIRED state then and ends. Before, nothing woke either: the poll ran
/// to its timeout and the stream never ended.
async fn a_job_expiring_while_it_waits_wakes_its_waiters(api: &TestApi) {
    api.bind_example("late", "hello").await;
    let body = json!({ "task": "late", "input": { "name": "x" }, "expires_in": 1 });
    // Polled for 20 s: it comes back at its expiry. (The timeout detects a
    // hang, it measures nothing.)
    let id = api.submit(body.clone()).await;
    let polled = tokio::time::timeout(
        Duration::from_secs(10),
        api.call(api.req(
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}?wait=20s"),
            Some(SUBMIT),
        )),
    )
    .await
    .expect("the long poll was not woken by the job's expiry");
    assert_eq!(polled.0, StatusCode::OK, "{}", polled.1);
    assert_eq!(polled.1["state"], "EXPIRED", "{}", polled.1);
    assert_eq!(polled.1["error"]["kind"], "expired", "{}", polled.1);
    // Streamed: PENDING, then EXPIRED, then the end.
    let id = api.submit(body).await;
    let res = api.event_stream(&format!("/v1/jobs/{id}/events")).await;
    let text = tokio::time::timeout(Duration::from_secs(10), res.text())
        .await
        .expect("the stream did not end at the job's expiry")
        .unwrap();
    let states: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str::<Value>(d.trim()).unwrap())
        .filter_map(|d| d["state"].as_str().map(String::from))
        .collect();
    assert_eq!(states, ["PENDING", "EXPIRED"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_a_job_expiring_while_it_waits_wakes_its_waiters_embedded() {
    let api = TestApi::start(None, "64MiB", false).await;
    a_job_expiring_while_it_waits_wakes_its_waiters(&api).await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_a_job_expiring_while_it_waits_wakes_its_waiters_redis() {
    let redis = RedisServer::start();
    let api = TestApi::start(Some(redis.url()), "64MiB", false).await;
    a_job_expiring_while_it_waits_wakes_its_waiters(&api).await;
    api.stop().await;
}

/// The OpenAPI document is served, well-formed, its references resolve,
/// and it lists every route the router serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_openapi_document_lists_every_route_and_its_refs_resolve() {
    let api = TestApi::start(None, "64MiB", false).await;
    let (s, doc) = api
        .call(api.req(reqwest::Method::GET, "/v1/openapi.json", None))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let expected = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("post", "/v1/modules"),
        ("get", "/v1/modules"),
        ("put", "/v1/modules/{hash}"),
        ("get", "/v1/modules/{hash}"),
        ("get", "/v1/tasks"),
        ("put", "/v1/tasks/{name}"),
        ("get", "/v1/tasks/{name}"),
        ("post", "/v1/tasks/{name}/rollback"),
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        ("post", "/v1/jobs/batch"),
        ("get", "/v1/jobs/{id}"),
        ("post", "/v1/jobs/{id}/revoke"),
        ("get", "/v1/jobs/{id}/events"),
        ("get", "/v1/events"),
        ("get", "/v1/queues"),
        ("get", "/v1/queues/{queue}/dead"),
        ("post", "/v1/queues/{queue}/replay"),
        ("post", "/v1/queues/{queue}/purge"),
        ("get", "/v1/queues/{queue}/running"),
        ("get", "/v1/queues/{queue}/scheduled"),
        ("post", "/v1/jobs/revoke"),
        ("get", "/v1/workers"),
        ("get", "/v1/inspect"),
        ("get", "/v1/schedules"),
        ("get", "/v1/schedules/{name}"),
        ("put", "/v1/schedules/{name}"),
        ("delete", "/v1/schedules/{name}"),
        ("post", "/v1/schedules/{name}/fire"),
        ("post", "/v1/schedules/{name}/enable"),
        ("post", "/v1/schedules/{name}/disable"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path}"
                );
                listed.push((method.clone(), path.clone()));
            }
        }
    }
    for (m, p) in expected {
        assert!(
            listed.iter().any(|(lm, lp)| lm == m && lp == p),
            "{m} {p} missing from the document"
        );
        // And the router serves it (anything but 404/405 for the route itself).
        let path = p
            .replace("{hash}", &module_hash(b"x"))
            .replace("{name}", "t")
            .replace("{id}", "0190a0a0-0000-7000-8000-000000000000")
            .replace("{queue}", "default");
        let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let res = api
            .req(method, &path, Some(ADMIN))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_ne!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
        if res.status() == StatusCode::NOT_FOUND {
            let v: Value = res.json().await.unwrap();
            assert!(
                !message(&v).starts_with("no route"),
                "{m} {p} is not routed: {v}"
            );
        }
    }
    // Every body is typed: no bare `object` (a schema that says nothing of
    // its properties) anywhere in the document.
    fn bare_objects(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                let object = match &o.get("type") {
                    Some(Value::String(t)) => t == "object",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                    _ => false,
                };
                if object
                    && !o.contains_key("properties")
                    && !o.contains_key("additionalProperties")
                {
                    out.push(at.to_string());
                }
                for (k, v) in o {
                    bare_objects(v, &format!("{at}/{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    bare_objects(v, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut bare = Vec::new();
    bare_objects(&doc, "#", &mut bare);
    assert!(bare.is_empty(), "untyped objects: {bare:?}");
    // The answers every route of a kind can give are listed.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let listed = |status: &str| op["responses"].get(status).is_some();
            if op.get("security").is_some() {
                assert!(listed("401"), "{method} {path} does not document 401");
            }
            if op.get("requestBody").is_some() {
                assert!(
                    listed("400") && listed("413"),
                    "{method} {path} takes a body but does not document 400 and 413"
                );
            }
            if path.starts_with("/v1/") {
                assert!(listed("503"), "{method} {path} does not document 503");
            }
        }
    }
    // Every $ref points at a schema that exists.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for piece in text.split("\"$ref\":\"").skip(1) {
        let r = &piece[..piece.find('"').unwrap()];
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("odd $ref {r}"));
        assert!(schemas.contains_key(name), "dangling $ref {r}");
    }
    api.stop().await;
}

/// Beats through the API: bad ones are 400 with the reason; a new beat is
/// picked up by the running scheduler at once; a manual fire carries the
/// beat's name; disable stops it without deleting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_schedules_are_validated_picked_up_and_fired() {
    let redis = RedisServer::start();
    let api = TestApi::start_with(Some(redis.url()), "64MiB", true, true).await;
    api.bind_example("greet", "hello").await;
    let put = |name: &str, body: Value| {
        api.call(
            api.req(
                reqwest::Method::PUT,
                &format!("/v1/schedules/{name}"),
                Some(ADMIN),
            )
            .json(&body),
        )
    };

    for (name, body, expect) in [
        ("b1", json!({"task": "greet", "cron": "61 * * * *"}), "61"),
        ("b2", json!({"task": "greet", "cron": "0 9 * * 8"}), "8"),
        (
            "b3",
            json!({"task": "greet", "cron": "0 9 * * *", "timezone": "Mars/Olympus"}),
            "Mars/Olympus",
        ),
        ("b4", json!({"task": "nope", "every": "1s"}), "nope"),
        ("b5", json!({"task": "greet"}), "cron"),
    ] {
        let (s, v) = put(name, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {v}");
        assert!(message(&v).contains(expect), "{name}: {v}");
    }
    // An empty name: the body's name must match the URL's, and "" cannot.
    let (s, v) = put("x", json!({"name": "", "task": "greet", "every": "1s"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    let (s, v) = put(
        "tick",
        json!({"task": "greet", "every": "1s", "input": {"name": "beat"}}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["next_fire"]["utc"].is_string(), "{v}");
    // Picked up without a restart: a job of this beat appears within ~2 s.
    let mut fired = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, v) = api
            .call(api.req(reqwest::Method::GET, "/v1/schedules/tick", Some(SUBMIT)))
            .await;
        if let Some(id) = v["last_fire"]["job"].as_str() {
            fired = Some(id.to_string());
            break;
        }
    }
    let id = fired.expect("the new beat fired within 4 s");
    let job = api.wait(&id).await;
    assert_eq!(job["state"], "SUCCESS", "{job}");
    assert_eq!(job["schedule"], "tick", "{job}");
    assert!(job["scheduled_for"].is_string(), "{job}");

    // Disable: no more fires; still listed.
    let (s, _) = api
        .call(api.req(
            reqwest::Method::POST,
            "/v1/schedules/tick/disable",
            Some(ADMIN),
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, before) = api
        .call(api.req(reqwest::Method::GET, "/v1/schedules/tick", Some(SUBMIT)))
        .await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (_, after) = api
        .call(api.req(reqwest::Method::GET, "/v1/schedules/tick", Some(SUBMIT)))
        .await;
    assert_eq!(
        before["last_fire"], after["last_fire"],
        "a disabled beat fired"
    );
    assert_eq!(after["enabled"], false);

    // Fire by hand: the job carries the beat's name.
    let (s, v) = api
        .call(api.req(
            reqwest::Method::POST,
            "/v1/schedules/tick/fire",
            Some(ADMIN),
        ))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["schedule"], "tick");
    let job = api.wait(v["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "SUCCESS", "{job}");
    // A submit token may not fire or change beats.
    let (s, _) = api
        .call(api.req(
            reqwest::Method::POST,
            "/v1/schedules/tick/fire",
            Some(SUBMIT),
        ))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, _) = api
        .call(api.req(reqwest::Method::DELETE, "/v1/schedules/tick", Some(ADMIN)))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .call(api.req(reqwest::Method::GET, "/v1/schedules/tick", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    api.stop().await;
}

/// `sha256:<hex>` of `bytes`, as the API shows it.
pub(crate) fn module_hash(bytes: &[u8]) -> String {
    runner::names::ModuleHash::of(bytes).to_string()
}

/// Purge and revoke in bulk, as an operator does: admin only, names
/// checked, a dry run that changes nothing, the running jobs of a task
/// stopped and its waiting ones ended, another task's jobs untouched until
/// the queue is purged whole; every job touched is listed.
async fn purge_and_revoke_in_bulk(api: &TestApi) {
    api.bind_example("sleep", "sleeper").await;
    api.bind_example("greet", "hello").await;
    let mut running = Vec::new();
    for _ in 0..2 {
        let (s, v) = api
            .enqueue(json!({ "task": "sleep", "input": { "ms": 60000 } }))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        running.push(v["id"].as_str().unwrap().to_string());
    }
    let later =
        |task: &str, input: Value| json!({ "task": task, "input": input, "countdown": 600 });
    let mut sleeps = Vec::new();
    for _ in 0..3 {
        let (_, v) = api.enqueue(later("sleep", json!({ "ms": 1 }))).await;
        sleeps.push(v["id"].as_str().unwrap().to_string());
    }
    let mut greets = Vec::new();
    for _ in 0..2 {
        let (_, v) = api.enqueue(later("greet", json!({ "name": "x" }))).await;
        greets.push(v["id"].as_str().unwrap().to_string());
    }
    for id in &running {
        api.wait_started(id).await;
    }
    let post = |path: &str, token: &'static str, body: Value| {
        api.call(
            api.req(reqwest::Method::POST, path, Some(token))
                .json(&body),
        )
    };
    let sorted = |v: &Value| {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let purge = "/v1/queues/default/purge";

    // What runs now, and what waits with its due time.
    let (s, v) = api
        .call(api.req(
            reqwest::Method::GET,
            "/v1/queues/default/running",
            Some(SUBMIT),
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut held: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            assert_eq!(j["state"], "STARTED", "{j}");
            assert!(
                j["worker"].is_string() && j["started_at"].is_string(),
                "{j}"
            );
            j["id"].as_str().unwrap().to_string()
        })
        .collect();
    held.sort();
    let mut expected_running = running.clone();
    expected_running.sort();
    assert_eq!(held, expected_running);
    let (_, v) = api
        .call(api.req(
            reqwest::Method::GET,
            "/v1/queues/default/scheduled",
            Some(SUBMIT),
        ))
        .await;
    assert_eq!(v.as_array().unwrap().len(), 5, "{v}");
    assert!(
        v[0]["due"].is_string() && v[0]["job"]["id"].is_string(),
        "{v}"
    );

    // Refused: a submit token; bad names; unknown fields; no filter at all.
    let (s, _) = post(purge, SUBMIT, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = post(purge, ADMIN, json!({ "task": "no such/task" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("task"), "{v}");
    let (s, v) = post("/v1/queues/bad queue/purge", ADMIN, json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = post(purge, ADMIN, json!({ "tasks": "sleep" })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("tasks"), "{v}");
    let (s, v) = post("/v1/jobs/revoke", ADMIN, json!({ "terminate": true })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("name a task, a queue or both"), "{v}");
    let (s, _) = post("/v1/jobs/revoke", SUBMIT, json!({ "task": "sleep" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A dry run lists and changes nothing.
    let (s, v) = post(purge, ADMIN, json!({ "task": "sleep", "dry_run": true })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["count"].as_u64(), v["dry_run"].as_bool()),
        (Some(3), Some(true))
    );
    let mut expected = sleeps.clone();
    expected.sort();
    assert_eq!(sorted(&v["purged"]), expected);
    let (_, v) = post(
        "/v1/jobs/revoke",
        ADMIN,
        json!({ "task": "sleep", "terminate": true, "dry_run": true }),
    )
    .await;
    assert_eq!(v["running"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["purged"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(api.state(&sleeps[0]).await, "PENDING");
    assert_eq!(api.state(&running[0]).await, "STARTED");

    // Every job of the task: running ones stopped, waiting ones ended.
    let (s, v) = post(
        "/v1/jobs/revoke",
        ADMIN,
        json!({ "task": "sleep", "terminate": true }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(sorted(&v["purged"]), expected);
    let mut stopped: Vec<String> = v["running"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["outcome"], "terminating", "{v}");
            r["id"].as_str().unwrap().to_string()
        })
        .collect();
    stopped.sort();
    running.sort();
    assert_eq!(stopped, running);
    for id in running.iter().chain(&sleeps) {
        let job = api.wait(id).await;
        assert_eq!(job["state"], "REVOKED", "{job}");
    }
    for id in &greets {
        assert_eq!(api.state(id).await, "PENDING");
    }

    // The queue purged whole: the other task's jobs.
    let (s, v) = post(purge, ADMIN, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    greets.sort();
    assert_eq!(sorted(&v["purged"]), greets);
    let job = api.wait(&greets[0]).await;
    assert_eq!(job["state"], "REVOKED", "{job}");
    assert_eq!(
        job["error"]["message"], "purged from its queue before it ran",
        "{job}"
    );
    let (_, v) = api
        .call(api.req(reqwest::Method::GET, "/v1/queues", Some(SUBMIT)))
        .await;
    let default = v
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap();
    assert_eq!(
        (default["ready"].as_u64(), default["delayed"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
}

on_both_brokers!(
    api_purge_and_revoke_in_bulk_on_the_embedded_broker,
    api_purge_and_revoke_in_bulk_on_redis,
    purge_and_revoke_in_bulk
);

/// What is kept of a job: `ignore_result` (per binding, per job, the job's
/// word first) keeps the state and drops the output; a result is gone
/// after its TTL; a job whose expiry passes before it may start ends
/// EXPIRED and never runs.
async fn results_only_where_needed(api: &TestApi) {
    let hello = guest_bytes("hello");
    let (s, v) = api.upload(&hello).await;
    assert!(s.is_success(), "{v}");
    let (s, v) = api
        .bind(
            "quiet",
            json!({ "module": module_hash(&hello), "ignore_result": true }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["binding"]["ignore_result"], true, "{v}");
    let (s, v) = api
        .bind("loud", json!({ "module": module_hash(&hello) }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["binding"].get("ignore_result").is_none(), "{v}");

    let run = |body: Value| async move {
        let (s, v) = api.enqueue(body).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        api.wait(v["id"].as_str().unwrap()).await
    };
    let name = json!({ "name": "kept?" });
    let quiet = run(json!({ "task": "quiet", "input": name })).await;
    assert_eq!(quiet["state"], "SUCCESS", "{quiet}");
    assert!(quiet["result"].is_null(), "no result stored: {quiet}");
    assert!(quiet["finished_at"].is_string(), "{quiet}");
    let asked = run(json!({ "task": "quiet", "input": name, "ignore_result": false })).await;
    assert!(asked["result"].is_object(), "the job's word first: {asked}");
    let loud = run(json!({ "task": "loud", "input": name })).await;
    assert!(loud["result"].is_object(), "{loud}");
    let hushed = run(json!({ "task": "loud", "input": name, "ignore_result": true })).await;
    assert_eq!(hushed["state"], "SUCCESS", "{hushed}");
    assert!(hushed["result"].is_null(), "{hushed}");

    // A result kept one second.
    let short = run(json!({ "task": "loud", "input": name, "result_ttl": 1 })).await;
    assert!(short["result"].is_object(), "{short}");
    let id = short["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = api
            .call(api.req(
                reqwest::Method::GET,
                &format!("/v1/jobs/{id}"),
                Some(SUBMIT),
            ))
            .await;
        if s == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "kept past its TTL: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The job with the default TTL is still there.
    assert_eq!(api.state(loud["id"].as_str().unwrap()).await, "SUCCESS");

    // Due in 1 s, expired after 0.3 s: it never runs.
    let late =
        run(json!({ "task": "loud", "input": name, "countdown": 1, "expires_in": 0.3 })).await;
    assert_eq!(late["state"], "EXPIRED", "{late}");
    assert_eq!(late["error"]["kind"], "expired", "{late}");
    assert!(
        late["result"].is_null() && late["started_at"].is_null(),
        "{late}"
    );
}

on_both_brokers!(
    api_results_only_where_needed_on_the_embedded_broker,
    api_results_only_where_needed_on_redis,
    results_only_where_needed
);

/// `GET /v1/jobs` finds jobs newest first, by task, state (any case) and
/// time, a page at a time; a bad filter is a 400 naming it.
async fn find_jobs(api: &TestApi) {
    api.bind_example("greet", "hello").await;
    api.bind_example("boom", "panicker").await;
    let mut greets = Vec::new();
    for i in 0..3 {
        greets.push(
            api.submit(json!({ "task": "greet", "input": { "name": format!("n{i}") } }))
                .await,
        );
    }
    let boom = api
        .submit(json!({ "task": "boom", "input": {}, "retry": { "max_retries": 0 } }))
        .await;
    for id in greets.iter().chain([&boom]) {
        api.wait(id).await;
    }
    // What the panicking run wrote to stderr is in its record's log.
    let job = api.wait(&boom).await;
    assert!(
        job["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("[stderr] ") && m.contains("deliberate panic"))),
        "{job}"
    );
    let list = |query: &str| {
        let path = format!("/v1/jobs{query}");
        async move {
            api.call(api.req(reqwest::Method::GET, &path, Some(SUBMIT)))
                .await
        }
    };
    let ids = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut newest_first = greets.clone();
    newest_first.reverse();

    let (s, v) = list("?task=greet").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), newest_first, "{v}");
    assert!(v["next"].is_null(), "{v}");
    assert!(
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "SUCCESS" && j["result"].is_object()),
        "{v}"
    );
    let (_, v) = list("?state=failure").await;
    assert_eq!(ids(&v), vec![boom.clone()], "{v}");
    assert_eq!(v["jobs"][0]["error"]["kind"], "trap", "{v}");
    let (_, v) = list("?state=SUCCESS&since=1h").await;
    assert_eq!(ids(&v), newest_first, "{v}");
    let (_, v) = list("?until=2020-01-01T00:00:00Z").await;
    assert_eq!(ids(&v), Vec::<String>::new(), "{v}");

    // Pages of two: every job once, newest first.
    let (_, v) = list("?limit=2").await;
    assert_eq!(ids(&v), [boom.clone(), greets[2].clone()], "{v}");
    let next = v["next"].as_str().unwrap().to_string();
    let (_, v) = list(&format!("?limit=2&cursor={next}")).await;
    assert_eq!(ids(&v), [greets[1].clone(), greets[0].clone()], "{v}");
    let (_, v) = list(&format!("?limit=2&cursor={}", greets[0])).await;
    assert_eq!(ids(&v), Vec::<String>::new(), "{v}");
    assert!(v["next"].is_null(), "{v}");

    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
        ("?limit=many", "limit"),
        ("?state=DONE", "state"),
        ("?since=yesterday", "since"),
        ("?since=1e20", "since"),
        ("?until=-1h", "until"),
        ("?until=NaN", "until"),
        ("?cursor=page2", "cursor"),
        ("?parent=42", "parent"),
        ("?queue=bad%20queue", "queue"),
        ("?tasks=greet", "tasks"),
    ] {
        let (s, v) = list(query).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert!(message(&v).contains(field), "{query}: {v}");
    }
    for wait in ["1e20", "-5", "soon"] {
        let path = format!("/v1/jobs/{boom}?wait={wait}");
        let (s, v) = api
            .call(api.req(reqwest::Method::GET, &path, Some(SUBMIT)))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert!(message(&v).contains("wait"), "{path}: {v}");
    }
    let (s, _) = api
        .call(api.req(reqwest::Method::GET, "/v1/jobs", None))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

on_both_brokers!(
    api_find_jobs_on_the_embedded_broker,
    api_find_jobs_on_redis,
    find_jobs
);

/// `GET /v1/inspect` asks the workers what they hold: the jobs running,
/// with start time, attempt and the fuel they used so far (growing while
/// they burn), and the prefetched ones waiting for a slot, in order.
async fn inspect_what_workers_hold(api: &TestApi) {
    api.bind_example("burn", "fuel-burner").await;
    api.bind_example("greet", "hello").await;
    // The worker runs 4 at once: four burners take every slot.
    let mut burners = Vec::new();
    for _ in 0..4 {
        burners.push(api.submit(json!({ "task": "burn", "input": {} })).await);
    }
    for id in &burners {
        api.wait_started(id).await;
    }
    let mut greets = Vec::new();
    for i in 0..2 {
        greets.push(
            api.submit(json!({ "task": "greet", "input": { "name": format!("g{i}") } }))
                .await,
        );
    }
    let inspect = || async {
        let (s, v) = api
            .call(api.req(reqwest::Method::GET, "/v1/inspect?timeout=5s", Some(SUBMIT)))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v.as_array().unwrap().len(), 1, "one worker: {v}");
        v[0].clone()
    };
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    // The greets are leased as soon as the worker looks for work again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        let w = inspect().await;
        if ids(&w["reserved"]) == greets {
            break w;
        }
        assert!(std::time::Instant::now() < deadline, "never reserved: {w}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut running = ids(&first["active"]);
    running.sort();
    let mut expected = burners.clone();
    expected.sort();
    assert_eq!(running, expected, "{first}");
    for j in first["active"].as_array().unwrap() {
        assert_eq!(j["task"], "burn", "{j}");
        assert_eq!(j["attempt"], 1, "{j}");
        assert!(j["started_at"].is_string(), "{j}");
    }
    for j in first["reserved"].as_array().unwrap() {
        assert!(
            j["started_at"].is_null() && j["leased_at"].is_string(),
            "{j}"
        );
        assert_eq!(j["task"], "greet", "{j}");
    }
    assert_eq!(first["concurrency"], 4, "{first}");
    let fuel = |w: &Value, id: &str| {
        w["active"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .and_then(|j| j["fuel_used"].as_u64())
            .unwrap_or_else(|| panic!("no fuel for {id}: {w}"))
    };
    // The fuel used so far grows while it burns (however slowly a loaded
    // machine lets it run).
    let before = fuel(&first, &burners[0]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = fuel(&inspect().await, &burners[0]);
        if after > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fuel used stays at {before}"
        );
    }

    // Stopped, the burners make room: the greets run.
    for id in &burners {
        api.terminate(id).await;
    }
    for id in &greets {
        assert_eq!(api.wait(id).await["state"], "SUCCESS");
    }
    // A job's end is stored after its worker let go of it.
    for id in &burners {
        assert_eq!(api.wait(id).await["state"], "REVOKED");
    }
    let last = inspect().await;
    assert!(
        ids(&last["active"]).is_empty() && ids(&last["reserved"]).is_empty(),
        "{last}"
    );
    let (s, v) = api
        .call(api.req(
            reqwest::Method::GET,
            "/v1/inspect?timeout=soon",
            Some(SUBMIT),
        ))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("timeout"), "{v}");
    // A number of seconds too large for a duration is refused, not a
    // panic that drops the connection.
    let (s, v) = api
        .call(api.req(
            reqwest::Method::GET,
            "/v1/inspect?timeout=1e20",
            Some(SUBMIT),
        ))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("timeout"), "{v}");
}

on_both_brokers!(
    api_inspect_what_workers_hold_on_the_embedded_broker,
    api_inspect_what_workers_hold_on_redis,
    inspect_what_workers_hold
);

/// Priorities on a busy worker: 1,000 jobs of priority 0 and then 10 of
/// priority 9 are queued while every slot is taken; once slots free up,
/// the 10 start before every low job the worker had not already
/// prefetched (a prefetched job is not taken back).
async fn priorities_jump_the_queue(api: &TestApi) {
    api.bind_example("sleep", "sleeper").await;
    api.bind_example("greet", "hello").await;
    let mut sleepers = Vec::new();
    for _ in 0..4 {
        sleepers.push(
            api.submit(json!({ "task": "sleep", "input": { "ms": 60000 } }))
                .await,
        );
    }
    for id in &sleepers {
        api.wait_started(id).await;
    }
    let batch = |n: usize, priority: u64| async move {
        let jobs: Vec<Value> = (0..n)
            .map(|i| json!({ "task": "greet", "input": { "name": format!("{priority}-{i}") }, "priority": priority }))
            .collect();
        let (s, v) = api
            .call(
                api.req(reqwest::Method::POST, "/v1/jobs/batch", Some(SUBMIT))
                    .json(&json!({ "jobs": jobs })),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let low = batch(1000, 0).await;
    let high = batch(10, 9).await;
    let (s, held) = api
        .call(api.req(reqwest::Method::GET, "/v1/inspect?timeout=5s", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::OK, "{held}");
    let prefetched: Vec<String> = held[0]["reserved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert!(prefetched.len() < 100, "{held}");
    for id in &sleepers {
        api.terminate(id).await;
    }
    let started = |job: &Value| {
        chrono::DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap()
    };
    let mut last_high = None;
    for id in &high {
        let job = api.wait(id).await;
        assert_eq!(job["state"], "SUCCESS", "{job}");
        assert_eq!(job["priority"], 9, "{job}");
        last_high = last_high.max(Some(started(&job)));
    }
    let last_high = last_high.unwrap();
    // The queue drains in order: once the last low job ended, all did.
    assert_eq!(api.wait(low.last().unwrap()).await["state"], "SUCCESS");
    let mut later = 0;
    for id in low.iter().filter(|id| !prefetched.contains(id)) {
        let job = api.job(id, "").await;
        assert!(
            job.get("priority").is_none(),
            "priority 0 is not shown: {job}"
        );
        assert!(
            started(&job) >= last_high,
            "{id} started before a high job: {job}"
        );
        later += 1;
    }
    assert!(later > 900, "{later}");
}

on_both_brokers!(
    api_priorities_jump_the_queue_on_the_embedded_broker,
    api_priorities_jump_the_queue_on_redis,
    priorities_jump_the_queue
);

/// A queue split into partitions (`[queues.hot] partitions = 4`) is one
/// queue to its users: its jobs spread over the partitions, the worker
/// runs them all, and the queue's views add the partitions up.
async fn a_partitioned_queue_is_one_queue(redis: Option<String>) {
    let api = TestApi::start_configured(sandbox(), redis, "64MiB", true, false, |c| {
        c.queues.insert(
            "hot".into(),
            runner::config::QueueConfig {
                partitions: Some(4),
                ..Default::default()
            },
        );
        c.queues.insert(
            "metered".into(),
            runner::config::QueueConfig {
                partitions: Some(4),
                rate_limit: Some("2/m".into()),
            },
        );
    })
    .await;
    let hello = guest_bytes("hello");
    let (s, v) = api.upload(&hello).await;
    assert!(s.is_success(), "{v}");
    let (s, v) = api
        .bind(
            "greet",
            json!({ "module": module_hash(&hello), "queue": "hot" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let get = |path: String| api.call(api.req(reqwest::Method::GET, &path, Some(SUBMIT)));

    // Jobs for later: each in one of the partitions.
    let mut later = Vec::new();
    for i in 0..12 {
        later.push(
            api.submit(
                json!({ "task": "greet", "input": { "name": format!("n{i}") }, "countdown": 600 }),
            )
            .await,
        );
    }
    let mut partitions = std::collections::BTreeSet::new();
    for id in &later {
        let (_, j) = get(format!("/v1/jobs/{id}")).await;
        let queue = j["queue"].as_str().unwrap().to_string();
        assert!(queue.starts_with("hot~"), "{j}");
        partitions.insert(queue);
    }
    assert!(partitions.len() >= 2, "{partitions:?}");

    // The views: one queue, all of it.
    let (s, v) = get("/v1/queues".into()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rows = v.as_array().unwrap();
    let hot: Vec<&Value> = rows
        .iter()
        .filter(|r| r["name"].as_str().unwrap().starts_with("hot"))
        .collect();
    assert_eq!(hot.len(), 1, "{v}");
    assert_eq!(hot[0]["name"], "hot");
    assert_eq!(hot[0]["delayed"], 12, "{v}");
    let (s, v) = get("/v1/queues/hot".into()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["name"].clone(), v["delayed"].clone()),
        (json!("hot"), json!(12)),
        "{v}"
    );
    let (_, v) = get("/v1/queues/hot/scheduled".into()).await;
    let due: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["due"].as_str().unwrap())
        .collect();
    assert_eq!(due.len(), 12, "{v}");
    assert!(
        due.windows(2).all(|w| w[0] <= w[1]),
        "soonest first: {due:?}"
    );
    let (_, v) = get("/v1/jobs?queue=hot&limit=100".into()).await;
    let mut listed: Vec<String> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut expected = later.clone();
    expected.sort();
    assert_eq!(listed, expected);
    // One partition can be looked at alone.
    let one = partitions.first().unwrap();
    let (s, v) = get(format!("/v1/queues/{one}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["delayed"].as_u64().unwrap() < 12, "{v}");
    let (s, v) = get("/v1/queues/hot~99".into()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // A repeated request meets the job it repeats, in its partition.
    let keyed = json!({ "task": "greet", "input": { "name": "k" }, "idempotency_key": "order-7" });
    let first = api.submit(keyed.clone()).await;
    for _ in 0..3 {
        let (s, v) = api.enqueue(keyed.clone()).await;
        assert!(s.is_success(), "{v}");
        assert_eq!(v["id"], first.as_str(), "{v}");
    }
    // The worker consumes every partition.
    let mut now = vec![first];
    for i in 0..8 {
        now.push(
            api.submit(json!({ "task": "greet", "input": { "name": format!("r{i}") } }))
                .await,
        );
    }
    for id in &now {
        let j = api.wait(id).await;
        assert_eq!(j["state"], "SUCCESS", "{j}");
    }

    // A rate limit stays exact: the limited jobs share one partition, so
    // its log counts every start.
    let (s, v) = api
        .bind(
            "meter",
            json!({ "module": module_hash(&hello), "queue": "metered" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut metered = Vec::new();
    for i in 0..5 {
        metered.push(
            api.submit(json!({ "task": "meter", "input": { "name": format!("m{i}") } }))
                .await,
        );
    }
    let mut queues = std::collections::BTreeSet::new();
    for id in &metered {
        let (_, j) = get(format!("/v1/jobs/{id}")).await;
        queues.insert(j["queue"].as_str().unwrap().to_string());
    }
    assert_eq!(queues.len(), 1, "{queues:?}");
    assert!(
        queues.first().unwrap().starts_with("metered~"),
        "{queues:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut done = 0;
        for id in &metered {
            if api.state(id).await == "SUCCESS" {
                done += 1;
            }
        }
        let (_, v) = get("/v1/queues/metered/scheduled".into()).await;
        if done == 2 && v.as_array().unwrap().len() == 3 {
            break;
        }
        assert!(done <= 2, "{done} runs within the minute of a 2/m limit");
        assert!(
            std::time::Instant::now() < deadline,
            "{done} done, scheduled: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, v) = get("/v1/queues/metered".into()).await;
    let limit = &v["rate_limits"][0];
    assert_eq!(
        (limit["key"].clone(), limit["used"].clone()),
        (json!("queue:metered"), json!(2)),
        "{v}"
    );

    // Purging the queue purges every partition.
    let (s, v) = api
        .call(
            api.req(reqwest::Method::POST, "/v1/queues/hot/purge", Some(ADMIN))
                .json(&json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 12, "{v}");
    let (_, v) = get("/v1/queues/hot".into()).await;
    assert_eq!(v["delayed"], 0, "{v}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_queue_is_one_queue_embedded() {
    a_partitioned_queue_is_one_queue(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_queue_is_one_queue_redis() {
    let redis = RedisServer::start();
    a_partitioned_queue_is_one_queue(Some(redis.url())).await;
}

/// A batch holds at most 10,000 jobs; a longer one is refused as it is
/// read, and nothing is stored. Before, any number was taken, and all of
/// it was read first: a body of `{}`s (3 bytes each, hundreds in memory)
/// took gigabytes before any check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_a_batch_over_the_maximum_is_refused() {
    let api = TestApi::start(None, "1MiB", false).await;
    api.bind_example("greet", "hello").await;
    let send = |n: usize| {
        let body = json!({ "jobs": vec![json!({ "task": "greet" }); n] });
        api.call(
            api.req(reqwest::Method::POST, "/v1/jobs/batch", Some(SUBMIT))
                .json(&body),
        )
    };
    let (s, v) = send(10_001).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        message(&v).contains("jobs") && message(&v).contains("10000"),
        "{v}"
    );
    let (s, v) = api
        .call(api.req(reqwest::Method::GET, "/v1/jobs", Some(ADMIN)))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(0), "{v}");
    let (s, v) = send(10_000).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(10_000));
    api.stop().await;
}

/// A job's `input` may be `null`, as a beat's and a workflow step's may:
/// it is stored as `null`. Before, a `null` sent was stored as `{}`, as
/// if no input had been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_a_null_input_is_kept() {
    let api = TestApi::start(None, "1MiB", false).await;
    api.bind_example("greet", "hello").await;
    let id = api.submit(json!({ "task": "greet", "input": null })).await;
    assert!(api.job(&id, "").await["input"].is_null());
    let id = api.submit(json!({ "task": "greet" })).await;
    assert_eq!(api.job(&id, "").await["input"], json!({}));
    api.stop().await;
}

/// A binding to a built-in that is refused stores nothing: not the
/// built-in's module either. Before, the module was stored first, then
/// the binding refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_a_refused_binding_to_a_builtin_stores_no_module() {
    let api = TestApi::start(None, "1MiB", false).await;
    let modules = || async {
        let (s, v) = api
            .call(api.req(reqwest::Method::GET, "/v1/modules", Some(ADMIN)))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.as_array().unwrap().len()
    };
    for (name, body, status) in [
        (
            "bad%20name",
            json!({ "module": "builtin:hello" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "x",
            json!({ "module": "builtin:hello", "rate_limit": "0/m" }),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, v) = api.bind(name, body).await;
        assert_eq!(s, status, "{v}");
        assert_eq!(modules().await, 0, "after {name}: {v}");
    }
    let (s, v) = api.bind("x", json!({ "module": "builtin:hello" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(modules().await, 1);
    api.stop().await;
}

/// A beat's `name` in the body, when given, is a string: another type is
/// refused like any other field of the wrong type. Before, it was
/// replaced by the URL's name and the beat stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_a_beat_name_of_the_wrong_type_is_refused() {
    let api = TestApi::start_with(None, "1MiB", false, true).await;
    api.bind_example("greet", "hello").await;
    for name in [json!(5), json!(true), json!({})] {
        let body = json!({ "name": name, "task": "greet", "every": "1m" });
        let (s, v) = api
            .call(
                api.req(reqwest::Method::PUT, "/v1/schedules/a", Some(ADMIN))
                    .json(&body),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(message(&v).contains("name"), "{v}");
    }
    let (_, v) = api
        .call(api.req(reqwest::Method::GET, "/v1/schedules", Some(ADMIN)))
        .await;
    assert_eq!(v.as_array().map(Vec::len), Some(0), "nothing stored: {v}");
    api.stop().await;
}

/// An expiry under a millisecond away is a millisecond away, not now:
/// `expires_in` is more than 0 by its schema. Before, it was truncated
/// to now and refused as an `expires` in the past (a field not sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_an_expiry_under_a_millisecond_is_taken() {
    let api = TestApi::start(None, "1MiB", false).await;
    api.bind_example("greet", "hello").await;
    let (s, v) = api
        .enqueue(json!({ "task": "greet", "expires_in": 0.0004 }))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    api.stop().await;
}
