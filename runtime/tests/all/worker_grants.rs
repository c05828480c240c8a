//! Capabilities in the worker: each job runs with the grants of the binding
//! that bound its module, `jobs.enqueue` fans out through the queue, and
//! every job and host call is traced and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use runner::producer::ChildJobs;
use runner::producer::EnqueueRequest;
use runner::queue::Job;
use runner::queue::{JobId, JobState};
use runner::registry::{JobsGrant, KvGrant, TaskGrants};
use runner::sandbox::host::HostServices;
use runner::sandbox::host::JobEnqueuer;
use runner::sandbox::wit::jobs::EnqueueOptions;
use runner_host_fns::kv::KvService;

use crate::support::guest_bytes;
use crate::worker::{Env, cfg, enqueue, wait_final};

fn kv_services() -> HostServices {
    HostServices {
        kv: Some(Arc::new(KvService::in_memory())),
        ..HostServices::default()
    }
}

fn kv_grant() -> TaskGrants {
    TaskGrants {
        kv: Some(KvGrant::default()),
        ..TaskGrants::default()
    }
}

async fn fan_out_children_run_and_succeed(env: Env) {
    env.bind("hello", "hello", "default", |_| {}).await;
    env.bind("fan-out", "fan_out", "default", |b| {
        b.grants.jobs = Some(JobsGrant::tasks(["hello", "no-such-task"]))
    })
    .await;
    env.bind("fan-out-ungranted", "fan_out", "default", |_| {})
        .await;
    let w = env.worker(cfg(&["default"], 2)).await;

    let parent = enqueue(&env, "fan-out", r#"{"task": "hello", "count": 3}"#).await;
    let p = wait_final(&env.broker, parent).await;
    assert_eq!(p.state, JobState::Success, "{p:?}");
    let out = p.result_value().unwrap();
    let ids: Vec<JobId> = out["children"]
        .as_array()
        .unwrap_or_else(|| panic!("no children in {out}"))
        .iter()
        .map(|id| id.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{out}");
    assert_eq!(p.children, ids, "the parent's record lists its children");
    for (i, id) in ids.iter().enumerate() {
        let child = wait_final(&env.broker, *id).await;
        assert_eq!(child.state, JobState::Success, "{child:?}");
        assert_eq!(child.parent, Some(parent));
        assert_eq!(child.task.as_deref(), Some("hello"));
        assert_eq!(
            child.result_value().unwrap()["greeting"],
            format!("Hello, child {i}!")
        );
    }

    // Without the grant the task reads `denied` and fails; nothing is enqueued.
    let denied = enqueue(&env, "fan-out-ungranted", r#"{"task": "hello"}"#).await;
    let j = wait_final(&env.broker, denied).await;
    assert_eq!(j.state, JobState::Failure);
    let e = j.error.unwrap();
    assert!(
        e.message
            .contains("denied: this task is not granted `jobs`"),
        "{e:?}"
    );
    assert!(j.children.is_empty());

    // An unknown child task is the task's mistake: `invalid`, not a retry.
    let unknown = enqueue(&env, "fan-out", r#"{"task": "no-such-task", "count": 1}"#).await;
    let j = wait_final(&env.broker, unknown).await;
    assert_eq!(j.state, JobState::Failure);
    assert_eq!(j.attempt, 1);
    let e = j.error.unwrap();
    assert!(
        e.message.contains("invalid") && e.message.contains("no-such-task"),
        "{e:?}"
    );

    // A countdown past any date is the task's mistake too; it once
    // overflowed the producer inside the host call and left the parent
    // STARTED forever.
    let far = enqueue(
        &env,
        "fan-out",
        &format!(
            r#"{{"task": "hello", "count": 1, "countdown_ms": {}}}"#,
            u64::MAX
        ),
    )
    .await;
    let j = wait_final(&env.broker, far).await;
    assert_eq!(j.state, JobState::Failure, "{j:?}");
    let e = j.error.unwrap();
    assert!(
        e.message.contains("invalid") && e.message.contains("countdown"),
        "{e:?}"
    );
    assert!(j.children.is_empty());
    w.stop().await;
}

/// The jobs grant is the whole of what a task may enqueue: the tasks and
/// queues it names, so many children per run, so deep. Each of these
/// enqueues succeeded before the grant named them (`jobs = true`).
async fn children_stay_within_the_jobs_grant(env: Env) {
    env.bind("hello", "hello", "default", |_| {}).await;
    env.bind("cleanup", "hello", "default", |_| {}).await;
    env.bind("fan-out", "fan_out", "default", |b| {
        b.grants.jobs = Some(JobsGrant {
            queues: vec!["bulk".into()],
            max_children: Some(2),
            max_depth: Some(1),
            ..JobsGrant::tasks(["hello", "fan-out"])
        })
    })
    .await;
    let w = env.worker(cfg(&["default", "bulk", "other"], 2)).await;
    let failed_with = |j: &runner::queue::Job, what: &str| {
        assert_eq!(j.state, JobState::Failure, "{j:?}");
        let e = j.error.clone().unwrap();
        assert!(
            e.message.contains("denied") && e.message.contains(what),
            "{e:?}"
        );
    };

    // A task it does not name: the confused deputy.
    let j = enqueue(&env, "fan-out", r#"{"task": "cleanup", "count": 1}"#).await;
    let j = wait_final(&env.broker, j).await;
    failed_with(&j, "grants.jobs.tasks");
    assert!(j.children.is_empty());

    // A queue it does not name; one it names.
    let j = enqueue(&env, "fan-out", r#"{"count": 1, "queue": "other"}"#).await;
    failed_with(&wait_final(&env.broker, j).await, "grants.jobs.queues");
    let j = enqueue(&env, "fan-out", r#"{"count": 1, "queue": "bulk"}"#).await;
    let j = wait_final(&env.broker, j).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    let child = wait_final(&env.broker, j.children[0]).await;
    assert_eq!(child.queue, "bulk");

    // More children than a run may have: the first two are enqueued.
    let j = enqueue(&env, "fan-out", r#"{"count": 3}"#).await;
    let j = wait_final(&env.broker, j).await;
    failed_with(&j, "max_children");
    assert_eq!(j.children.len(), 2, "{j:?}");

    // Deeper than max_depth: the child (depth 1) may not enqueue.
    let j = enqueue(&env, "fan-out", r#"{"task": "fan-out", "count": 1}"#).await;
    let j = wait_final(&env.broker, j).await;
    assert_eq!(j.state, JobState::Success, "{j:?}");
    assert_eq!(j.depth, 0);
    let child = wait_final(&env.broker, j.children[0]).await;
    assert_eq!(child.depth, 1);
    failed_with(&child, "max_depth");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_stay_within_the_jobs_grant_on_the_embedded_broker() {
    children_stay_within_the_jobs_grant(Env::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_stay_within_the_jobs_grant_on_redis() {
    children_stay_within_the_jobs_grant(Env::redis().await).await;
}

/// The embedded broker with `hello` bound, and a job of it prepared (not
/// enqueued): the parent of the children a test enqueues.
async fn hello_parent() -> (Env, Job) {
    let env = Env::embedded().await;
    env.bind("hello", "hello", "default", |_| {}).await;
    let parent = env
        .producer
        .prepare(EnqueueRequest::task("hello", "{}"))
        .await
        .unwrap();
    (env, parent)
}

/// A run repeated after its worker was lost (same job, same attempt)
/// enqueues the same children, not new ones: a child that names no key
/// gets one from its parent, the attempt and the call's sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_run_enqueues_the_same_children() {
    let (env, parent) = hello_parent().await;
    let grant = Some(JobsGrant::tasks(["hello"]));
    let run = |p: &Job| ChildJobs::new(env.producer.clone(), p, grant.clone());
    let options = EnqueueOptions {
        queue: None,
        countdown_ms: None,
        idempotency_key: None,
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let children = run(&parent);
        for i in 0..2 {
            children
                .enqueue("hello".into(), format!("{{\"n\": {i}}}"), options.clone())
                .await
                .unwrap();
        }
        runs.push(children.children());
    }
    assert_eq!(runs[0].len(), 2);
    assert_eq!(runs[0], runs[1], "the second run enqueued new children");
    let first = env.broker.get(runs[0][0]).await.unwrap().unwrap();
    assert_eq!(
        first.idempotency_key,
        Some(format!("child:{}:1:1", parent.id))
    );
    assert_eq!(first.parent, Some(parent.id));
    assert_eq!(first.depth, 1);

    // The next attempt (a retry) is a new run: new children.
    let retry = Job {
        attempt: 2,
        ..parent.clone()
    };
    let children = run(&retry);
    children
        .enqueue("hello".into(), "{}".into(), options.clone())
        .await
        .unwrap();
    assert!(!runs[0].contains(&children.children()[0]));

    // The runner's own keys are not the task's to use.
    let err = run(&parent)
        .enqueue(
            "hello".into(),
            "{}".into(),
            EnqueueOptions {
                idempotency_key: Some(format!("child:{}:1:1", parent.id)),
                ..options
            },
        )
        .await
        .unwrap_err();
    let err = format!("{err:?}");
    assert!(err.contains("the runner's own"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_children_run_and_succeed_on_the_embedded_broker() {
    fan_out_children_run_and_succeed(Env::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_children_run_and_succeed_on_redis() {
    fan_out_children_run_and_succeed(Env::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_with_the_grants_of_the_binding_of_its_module() {
    let env = Env::embedded().await;
    let guard = env
        .registry
        .put_module(&guest_bytes("kv_guard"))
        .await
        .unwrap();
    env.bind("guard", "kv_guard", "default", |b| b.grants = kv_grant())
        .await;
    // Enqueued while `guard` binds kv_guard with kv: the job keeps that module.
    let old = enqueue(&env, "guard", r#"{"key": "old"}"#).await;
    // Re-bound to another module without grants: kv_guard's binding is history.
    env.bind("guard", "hello", "default", |_| {}).await;
    // By module hash, no task: no binding, no grants.
    let by_hash = env
        .producer
        .enqueue(EnqueueRequest {
            module: Some(guard.to_string()),
            input: r#"{"key": "by-hash"}"#.into(),
            ..EnqueueRequest::default()
        })
        .await
        .unwrap()
        .job
        .id;

    let w = env.worker_with(kv_services(), cfg(&["default"], 2)).await;
    let j = wait_final(&env.broker, old).await;
    assert_eq!(j.state, JobState::Success, "history's grants apply: {j:?}");
    assert_eq!(j.result_value().unwrap()["first"], true);
    let j = wait_final(&env.broker, by_hash).await;
    assert_eq!(j.state, JobState::Failure);
    assert!(
        j.error
            .as_ref()
            .unwrap()
            .message
            .contains("denied: this task is not granted `kv`"),
        "{j:?}"
    );
    w.stop().await;

    // Re-bound to kv_guard without grants: the current binding decides, not
    // the older one with the same module.
    env.bind("guard", "kv_guard", "default", |_| {}).await;
    let w = env.worker_with(kv_services(), cfg(&["default"], 2)).await;
    let now = enqueue(&env, "guard", r#"{"key": "now"}"#).await;
    let j = wait_final(&env.broker, now).await;
    assert_eq!(j.state, JobState::Failure, "{j:?}");
    assert!(
        j.error.as_ref().unwrap().message.contains("denied"),
        "{j:?}"
    );
    w.stop().await;
}

/// A metrics recorder that keeps counters and histogram samples by their
/// rendered key (`name{label=value,...}`, labels sorted).
#[derive(Clone, Default)]
struct Recorded {
    counters: Arc<Mutex<HashMap<String, Arc<Count>>>>,
    histograms: Arc<Mutex<HashMap<String, Arc<Samples>>>>,
}

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let count = self
            .counters
            .lock()
            .unwrap()
            .entry(render(key))
            .or_default()
            .clone();
        Counter::from_arc(count)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let samples = self
            .histograms
            .lock()
            .unwrap()
            .entry(render(key))
            .or_default()
            .clone();
        Histogram::from_arc(samples)
    }
}

impl Recorded {
    fn counter(&self, key: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    }

    fn samples(&self, key: &str) -> Vec<f64> {
        self.histograms
            .lock()
            .unwrap()
            .get(key)
            .map_or_else(Vec::new, |s| s.0.lock().unwrap().clone())
    }
}

// One thread: the recorder and the subscriber below are this thread's, and
// the worker's tasks run on it.
#[tokio::test(flavor = "current_thread")]
async fn jobs_and_host_calls_are_traced_and_counted() {
    let recorded = Recorded::default();
    let _metrics = metrics::set_default_local_recorder(&recorded);
    let (captured, _tracing) = runner_test_support::capture_logs(tracing::Level::DEBUG);

    let env = Env::embedded().await;
    env.bind("counted", "kv_guard", "default", |b| b.grants = kv_grant())
        .await;
    env.bind("uncounted", "kv_guard", "default", |_| {}).await;
    let w = env.worker_with(kv_services(), cfg(&["default"], 1)).await;
    let ok = enqueue(&env, "counted", r#"{"key": "k"}"#).await;
    assert_eq!(wait_final(&env.broker, ok).await.state, JobState::Success);
    let denied = enqueue(&env, "uncounted", r#"{"key": "k"}"#).await;
    assert_eq!(
        wait_final(&env.broker, denied).await.state,
        JobState::Failure
    );
    w.stop().await;

    assert_eq!(
        recorded.counter("runner_jobs_total{outcome=success,queue=default,task=counted}"),
        1
    );
    assert_eq!(
        recorded.counter("runner_jobs_total{outcome=failure,queue=default,task=uncounted}"),
        1
    );
    assert_eq!(
        recorded
            .samples("runner_job_seconds{queue=default,task=counted}")
            .len(),
        1
    );
    // kv_guard calls set_nx then get: two granted calls, one denied.
    assert_eq!(
        recorded.counter("runner_host_calls_total{capability=kv,outcome=ok}"),
        2
    );
    assert_eq!(
        recorded.counter("runner_host_calls_total{capability=kv,outcome=denied}"),
        1
    );
    let seconds = recorded.samples("runner_host_call_seconds{capability=kv}");
    assert_eq!(seconds.len(), 3, "{seconds:?}");
    assert!(seconds.iter().all(|s| *s >= 0.0));

    let out = captured.text();
    let line = out
        .lines()
        .find(|l| l.contains("host call failed") && l.contains("task=uncounted"))
        .unwrap_or_else(|| panic!("no line for the denied call:\n{out}"));
    for part in [
        &format!("job={denied}"),
        r#"capability="kv""#,
        r#"function="set_nx""#,
        r#"outcome="denied""#,
        "duration_ms=",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    let ok_line = out
        .lines()
        .find(|l| l.contains("host call") && l.contains(&format!("job={ok}")))
        .unwrap_or_else(|| panic!("no line for the granted calls:\n{out}"));
    assert!(ok_line.contains(r#"outcome="ok""#), "{ok_line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_in_a_host_call_ends_at_its_time_limit() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let env = Env::embedded().await;
    env.bind("hook", "webhook", "default", |b| {
        b.limits.time_limit_ms = Some(1000);
        b.retry.max_retries = 0;
        b.grants = TaskGrants {
            http: Some(
                toml::from_str(&format!(
                    "allow = [\"http://127.0.0.1:{port}\"]\nprivate_networks = [\"127.0.0.1/32\"]"
                ))
                .unwrap(),
            ),
            ..TaskGrants::default()
        };
    })
    .await;
    let services = HostServices {
        http: Some(Arc::new(runner_host_fns::http::HttpService::new(
            toml::from_str("default_timeout = 120").unwrap(),
        ))),
        ..HostServices::default()
    };
    let w = env.worker_with(services, cfg(&["default"], 1)).await;
    let id = enqueue(
        &env,
        "hook",
        &format!(r#"{{"url": "http://127.0.0.1:{port}/", "kind": "json"}}"#),
    )
    .await;
    let j = wait_final(&env.broker, id).await;
    assert_eq!(j.state, JobState::Failure, "{j:?}");
    assert_eq!(j.error.as_ref().unwrap().kind, "time_limit", "{j:?}");
    let ran = j.finished_at.unwrap() - j.started_at.unwrap();
    assert!(ran >= chrono::Duration::seconds(1), "{ran:?}");
    w.stop().await;
}

/// The workflow `id` once it has ended (within 30 s).
pub(crate) async fn wait_workflow(
    workflows: &runner::workflow::Workflows,
    id: JobId,
) -> runner::workflow::WorkflowStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let st = workflows.status(id).await.unwrap().expect("the workflow");
        if st.state.is_final() {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A task starts a chord of children (`jobs::chord` in the SDK) and
/// returns; the members run, then the callback once with their results.
/// The grant covers every job of the workflow: a callback task it does not
/// name, or more jobs than `max_children`, refuse the whole workflow.
async fn a_task_starts_a_chord_of_children(env: Env) {
    env.bind("hello", "hello", "default", |_| {}).await;
    env.bind("cleanup", "hello", "default", |_| {}).await;
    env.bind("fan-out", "fan_out", "default", |b| {
        b.grants.jobs = Some(JobsGrant {
            max_children: Some(4),
            ..JobsGrant::tasks(["hello"])
        })
    })
    .await;
    let w = env.worker(cfg(&["default"], 2)).await;
    let workflows = runner::workflow::Workflows::new(env.producer.clone());

    let parent = enqueue(
        &env,
        "fan-out",
        r#"{"task": "hello", "count": 3, "chord": "hello"}"#,
    )
    .await;
    let p = wait_final(&env.broker, parent).await;
    assert_eq!(p.state, JobState::Success, "{p:?}");
    let id: JobId = p.result_value().unwrap()["workflow"]
        .as_str()
        .expect("the workflow's id")
        .parse()
        .unwrap();
    let st = wait_workflow(&workflows, id).await;
    assert_eq!(st.state, runner::queue::WfState::Succeeded, "{st:?}");
    assert_eq!((st.done, st.total), (4, 4));
    assert_eq!(
        st.result.as_ref().unwrap()["greeting"],
        "Hello, callback!",
        "{st:?}"
    );
    // Every job of it is the parent's child.
    for step in &st.tree.steps {
        let job = env.broker.get(step.job.unwrap()).await.unwrap().unwrap();
        assert_eq!(job.parent, Some(parent), "{job:?}");
        assert_eq!(job.depth, 1);
    }
    let cb = env
        .broker
        .get(st.tree.steps[3].job.unwrap())
        .await
        .unwrap()
        .unwrap();
    let input: serde_json::Value = serde_json::from_str(&cb.input).unwrap();
    assert_eq!(
        input["results"].as_array().map(Vec::len),
        Some(3),
        "{input}"
    );
    assert_eq!(input["results"][2]["greeting"], "Hello, child 2!");

    // A callback task the grant does not name: denied, nothing started.
    let j = enqueue(
        &env,
        "fan-out",
        r#"{"task": "hello", "count": 1, "chord": "cleanup"}"#,
    )
    .await;
    let j = wait_final(&env.broker, j).await;
    assert_eq!(j.state, JobState::Failure, "{j:?}");
    let e = j.error.unwrap();
    assert!(
        e.message.contains("denied") && e.message.contains("\"cleanup\""),
        "{e:?}"
    );
    // Five jobs where the grant allows four children.
    let j = enqueue(
        &env,
        "fan-out",
        r#"{"task": "hello", "count": 4, "chord": "hello"}"#,
    )
    .await;
    let j = wait_final(&env.broker, j).await;
    assert_eq!(j.state, JobState::Failure, "{j:?}");
    let e = j.error.unwrap();
    assert!(e.message.contains("max_children"), "{e:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_starts_a_chord_of_children_on_the_embedded_broker() {
    a_task_starts_a_chord_of_children(Env::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_starts_a_chord_of_children_on_redis() {
    a_task_starts_a_chord_of_children(Env::redis().await).await;
}

/// The steps of a workflow a task starts are held to what a submit token
/// may ask (they were compiled as the runner's own, so a task with a jobs
/// grant could pin any module under a granted task's name, or raise its
/// limits and retries past the binding's): only lowering is allowed, and a
/// queue the grant names is the grant's to allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_workflow_may_only_lower_what_the_binding_allows() {
    use runner::sandbox::wit::jobs::WorkflowOptions;
    let env = Env::embedded().await;
    env.bind("hello", "hello", "default", |b| {
        b.limits.fuel = Some(1_000_000);
    })
    .await;
    let other = env
        .registry
        .put_module(&guest_bytes("counter"))
        .await
        .unwrap();
    let parent = env
        .producer
        .prepare(EnqueueRequest::task("hello", "{}"))
        .await
        .unwrap();
    let grant = JobsGrant {
        queues: vec!["side".into()],
        ..JobsGrant::tasks(["hello"])
    };
    let workflows = Arc::new(runner::workflow::Workflows::new(env.producer.clone()));
    let start = |step: serde_json::Value| {
        let children = ChildJobs::new(env.producer.clone(), &parent, Some(grant.clone()))
            .with_workflows(workflows.clone());
        async move {
            let tree = serde_json::json!({ "group": [step] }).to_string();
            let options = WorkflowOptions {
                idempotency_key: None,
                ttl_secs: None,
            };
            children.start_workflow(tree, options).await
        }
    };
    for (step, field) in [
        (
            serde_json::json!({"task": "hello", "module": other.to_string()}),
            "module",
        ),
        (
            serde_json::json!({"task": "hello", "rate_limit": "1/s"}),
            "rate_limit",
        ),
        (
            serde_json::json!({"task": "hello", "limits": {"fuel": 2_000_000}}),
            "limits.fuel",
        ),
        (
            serde_json::json!({"task": "hello", "limits": {"memory_bytes": 1u64 << 30}}),
            "limits.memory_bytes",
        ),
        (
            serde_json::json!({"task": "hello", "retry": {"max_retries": 50}}),
            "retry.max_retries",
        ),
    ] {
        let err = format!("{:?}", start(step.clone()).await.unwrap_err());
        assert!(err.contains(field), "{step}: {err}");
        assert!(err.contains("workflow.group[0]"), "{step}: {err}");
    }
    assert_eq!(
        crate::support::jobs_not_final(env.broker.as_ref()).await,
        0,
        "a refused workflow enqueued something"
    );

    // Lowering is allowed, and so is a queue the grant names.
    let id: JobId = start(serde_json::json!({
        "task": "hello", "queue": "side", "limits": {"fuel": 500_000}
    }))
    .await
    .unwrap()
    .parse()
    .unwrap();
    let st = workflows.status(id).await.unwrap().unwrap();
    let job = env
        .broker
        .get(st.tree.steps[0].job.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.queue.as_str(), job.limits.fuel),
        ("side", Some(500_000))
    );
}

/// A task's workflow that nests too deeply to be stored is the task's
/// mistake: an `invalid` error, which no retry mends, and its jobs do not
/// count against the run's children. Before, it was `transient` (the task
/// retried it, and failed again) and each try used up children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_workflow_too_deep_to_store_is_invalid_and_costs_no_children() {
    use runner::sandbox::HostError;
    use runner::sandbox::wit::jobs::WorkflowOptions;
    let (env, parent) = hello_parent().await;
    let grant = JobsGrant {
        max_children: Some(40),
        ..JobsGrant::tasks(["hello"])
    };
    let workflows = Arc::new(runner::workflow::Workflows::new(env.producer.clone()));
    let children =
        ChildJobs::new(env.producer.clone(), &parent, Some(grant)).with_workflows(workflows);
    let options = || WorkflowOptions {
        idempotency_key: None,
        ttl_secs: None,
    };
    // 32 jobs, within every limit but the stored form's depth.
    let mut deep = serde_json::json!({"task": "hello"});
    for _ in 0..31 {
        deep = serde_json::json!({ "chord": [deep], "callback": {"task": "hello"} });
    }
    for _ in 0..2 {
        match children.start_workflow(deep.to_string(), options()).await {
            Err(HostError::Invalid(m)) => assert!(m.contains("nest too deeply"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    // The 40 children are all still there to use.
    let many: Vec<_> = (0..40)
        .map(|_| serde_json::json!({"task": "hello"}))
        .collect();
    let tree = serde_json::json!({ "group": many }).to_string();
    children.start_workflow(tree, options()).await.unwrap();
    assert_eq!(
        crate::support::jobs_not_final(env.broker.as_ref()).await,
        40
    );
}

/// A worker that stops while Redis is away cannot store the results it
/// holds: it says so at error level, naming the jobs (they run again once
/// their leases run out), instead of a quiet "worker stopped". One thread,
/// so that the subscriber sees the worker's tasks.
#[tokio::test(flavor = "current_thread")]
async fn a_worker_stopping_with_results_it_could_not_store_names_them() {
    let (captured, _tracing) = runner_test_support::capture_logs(tracing::Level::INFO);

    let mut env = Env::redis().await;
    env.bind("sleep", "sleeper", "default", |_| {}).await;
    let w = env.worker(cfg(&["default"], 1)).await;
    let id = enqueue(&env, "sleep", r#"{"ms": 1500}"#).await;
    // Leased and running (an idle worker is pushed it at once).
    let started = std::time::Instant::now();
    while env.broker.get(id).await.unwrap().unwrap().state != JobState::Started {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "never leased"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    env.redis.as_mut().unwrap().stop();
    w.stop().await;

    let out = captured.text();
    let line = out
        .lines()
        .find(|l| l.contains("stopped with results the broker never took"))
        .unwrap_or_else(|| panic!("no line names the unsettled results:\n{out}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&id.to_string()), "{line}");
    assert!(line.contains("count=1"), "{line}");
}
