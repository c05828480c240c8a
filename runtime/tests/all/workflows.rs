//! Workflows (chain, group, chord): the engine against both brokers the way
//! workers drive it (races and repeats forced by hand), and end to end
//! through the HTTP API with a real worker.

use std::time::Duration;

use reqwest::StatusCode;
use runner::producer::Caller;
use runner::queue::{Delivery, JobState, WfState};
use runner::workflow::{WorkflowRequest, Workflows};
use serde_json::{Value, json};

use crate::api::{ADMIN, SUBMIT, TestApi, message, module_hash, on_both_brokers};
use crate::queue_conformance::{Env, settle, success};
use crate::redis_support::{RedisServer, command_calls};
use crate::support::{echo_component, guest_bytes, task_error_component};

fn request(v: Value) -> WorkflowRequest {
    serde_json::from_value(v).unwrap()
}

/// Leases one job of `queue` for `worker`.
async fn lease_one(env: &Env, queue: &str, worker: &str) -> Delivery {
    let mut r = env
        .broker
        .settle(settle(queue, worker, vec![], 1))
        .await
        .unwrap();
    assert_eq!(r.deliveries.len(), 1, "{queue} has a job for {worker}");
    r.deliveries.remove(0)
}

/// A due check of `work` by `worker`, leasing nothing: what it hands out
/// (stale outbox entries) and when to look next.
async fn due_check(env: &Env, worker: &str) -> runner::queue::SettleReply {
    env.broker
        .settle(settle("work", worker, vec![], 0))
        .await
        .unwrap()
}

/// The outbox entries of `work` due now (any age).
async fn due_entries(env: &Env) -> Vec<runner::queue::JobId> {
    env.broker.outbox("work", Duration::ZERO, 10).await.unwrap()
}

/// Settles `d` as a success with `result` and returns its final record.
async fn finish(env: &Env, worker: &str, d: &Delivery, result: &str) -> runner::queue::Job {
    let c = success(d, result);
    let job = match &c.settlement {
        runner::queue::Settlement::Finish { job, .. } => job.clone(),
        _ => unreachable!(),
    };
    let r = env
        .broker
        .settle(settle(&d.lease.queue, worker, vec![c], 0))
        .await
        .unwrap();
    assert!(r.stale.is_empty());
    job
}

/// Settles `d` as failed for good (a dead letter, with `message`), applies
/// its end, and returns its final record.
async fn fail_for_good(
    env: &Env,
    wf: &Workflows,
    worker: &str,
    d: &Delivery,
    message: &str,
) -> runner::queue::Job {
    let mut failed = d.job.clone();
    failed.state = JobState::Failure;
    failed.error = Some(runner::queue::JobFailure::new("fail", message));
    let c = runner::queue::Completion {
        lease: d.lease.clone(),
        settlement: runner::queue::Settlement::Finish {
            job: failed.clone(),
            dead: true,
        },
        had_progress: false,
    };
    env.broker
        .settle(settle(&d.lease.queue, worker, vec![c], 0))
        .await
        .unwrap();
    wf.apply_ended(&[(d.lease.queue.clone(), failed.clone())])
        .await
        .unwrap();
    failed
}

/// A chord's two members end at the same instant on two workers, each
/// applying its end with its own engine, and both ends are applied again
/// (a redelivery, a stale outbox entry): the callback is enqueued once,
/// with both results in order.
async fn chord_callback_runs_once_under_races_and_repeats(env: Env) {
    let wf = Workflows::new(env.producer.clone());
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {
                "chord": [{"task": "echo", "input": {"n": 1}}, {"task": "echo", "input": {"n": 2}}],
                "callback": {"task": "other"}
            }})),
        )
        .await
        .unwrap();
    assert!(s.created);
    assert_eq!(s.total, 3);
    let d1 = lease_one(&env, "work", "w1").await;
    let d2 = lease_one(&env, "work", "w2").await;
    let (j1, j2) = tokio::join!(
        finish(&env, "w1", &d1, "\"a\""),
        finish(&env, "w2", &d2, "\"b\"")
    );
    // Both ends wait in the outbox until applied.
    let mut out = due_entries(&env).await;
    out.sort();
    let mut want = vec![j1.id, j2.id];
    want.sort();
    assert_eq!(out, want);
    let (e1, e2) = (
        Workflows::new(env.producer.clone()),
        Workflows::new(env.producer.clone()),
    );
    let (w1, w2) = ([("work".into(), j1.clone())], [("work".into(), j2.clone())]);
    let (a, b) = tokio::join!(e1.apply_ended(&w1), e2.apply_ended(&w2));
    a.unwrap();
    b.unwrap();
    assert!(due_entries(&env).await.is_empty());
    // Applied again, together and apart: nothing more happens.
    e1.apply(&[j1.clone(), j2.clone()]).await.unwrap();
    e2.apply(std::slice::from_ref(&j2)).await.unwrap();
    let r = env
        .broker
        .settle(settle("work", "w3", vec![], 10))
        .await
        .unwrap();
    assert_eq!(r.deliveries.len(), 1, "one callback");
    let cb = &r.deliveries[0];
    assert_eq!(cb.job.task.as_deref(), Some("other"));
    // Members' outputs in the chord's order, whoever ended first.
    assert_eq!(cb.job.input, r#"["a","b"]"#);
    let st = wf.status(s.id).await.unwrap().unwrap();
    assert_eq!(st.state, WfState::Running);
    assert_eq!((st.done, st.total), (2, 3));
    // The callback ends: the workflow succeeded with its result.
    let cbj = finish(&env, "w3", cb, r#"{"total": 2}"#).await;
    wf.apply_ended(&[("work".into(), cbj)]).await.unwrap();
    let st = wf.status(s.id).await.unwrap().unwrap();
    assert_eq!(st.state, WfState::Succeeded);
    assert_eq!((st.done, st.total), (3, 3));
    assert_eq!(st.result, Some(json!({"total": 2})));
    assert_eq!(st.tree.state, "succeeded");
}

/// A member fails for good: the workflow fails naming it, its error
/// callback is enqueued once (however often the end is applied), and the
/// chord's callback never is, even when the other member succeeds after.
async fn a_failed_member_runs_on_error_once_and_never_the_callback(env: Env) {
    let wf = Workflows::new(env.producer.clone());
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {
                "chord": [{"task": "echo"}, {"task": "echo"}],
                "callback": {"task": "other"},
                "on_error": {"task": "other", "queue": "errors"}
            }})),
        )
        .await
        .unwrap();
    let d1 = lease_one(&env, "work", "w1").await;
    let d2 = lease_one(&env, "work", "w2").await;
    let failed = fail_for_good(&env, &wf, "w2", &d2, "the mail server refused").await;
    wf.apply(std::slice::from_ref(&failed)).await.unwrap();
    let ok = finish(&env, "w1", &d1, "1").await;
    wf.apply_ended(&[("work".into(), ok)]).await.unwrap();
    let st = wf.status(s.id).await.unwrap().unwrap();
    assert_eq!(st.state, WfState::Failed);
    let path = d2.job.workflow.as_ref().unwrap().path.clone();
    assert_eq!(st.failed.as_deref(), Some(path.as_str()));
    assert_eq!(path, "workflow.chord[1]");
    assert_eq!(st.done, 2);
    // No callback in `work`; one error callback in `errors`.
    let r = env
        .broker
        .settle(settle("work", "w3", vec![], 10))
        .await
        .unwrap();
    assert!(r.deliveries.is_empty(), "the callback never runs");
    let r = env
        .broker
        .settle(settle("errors", "w3", vec![], 10))
        .await
        .unwrap();
    assert_eq!(r.deliveries.len(), 1, "one error callback");
    let input: Value = serde_json::from_str(&r.deliveries[0].job.input).unwrap();
    assert_eq!(input["step"], json!("workflow.chord[1]"));
    assert_eq!(input["workflow"], json!(s.id));
    assert_eq!(input["error"]["message"], json!("the mail server refused"));
}

/// A workflow's error callback runs once, even when the failure that
/// launched it is applied again after the callback's record expired (its
/// step's dead letter, kept 7 days, replayed and failing again): the
/// launch record says it went. Before, only the enqueue's lookup by id
/// stood in the way, and with the record gone the callback ran again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_callback_runs_once_after_its_record_expired() {
    let server = RedisServer::start();
    let env = crate::queue_conformance::redis_on(&server).await;
    let wf = Workflows::new(env.producer.clone());
    wf.submit(
        Caller::Admin,
        &request(json!({"workflow": {
            "task": "echo",
            "on_error": {"task": "other", "queue": "errors"}
        }})),
    )
    .await
    .unwrap();
    let d = lease_one(&env, "work", "w1").await;
    let failed = fail_for_good(&env, &wf, "w1", &d, "no").await;
    let e = lease_one(&env, "errors", "w2").await;
    finish(&env, "w2", &e, "1").await;
    // The callback's record expires.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let gone: u64 = redis::cmd("DEL")
        .arg(format!("runner:{{errors}}:job:{}", e.job.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, 1);
    // The failure is applied again.
    wf.apply_ended(&[("work".into(), failed)]).await.unwrap();
    let r = env
        .broker
        .settle(settle("errors", "w2", vec![], 10))
        .await
        .unwrap();
    assert!(
        r.deliveries.is_empty(),
        "the error callback ran again: {:?}",
        r.deliveries.iter().map(|d| d.job.id).collect::<Vec<_>>()
    );
}

/// Starts a chain of `echo`, then `other` (on its output).
async fn echo_then_other(wf: &Workflows) -> runner::workflow::Submitted {
    let req = request(json!({"workflow": {"chain": [{"task": "echo"}, {"task": "other"}]}}));
    wf.submit(Caller::Admin, &req).await.unwrap()
}

/// An end whose applier died before applying it (settled, never applied)
/// is handed out by a due check once it is stale, and applying it then
/// launches what it should.
async fn an_unapplied_end_is_applied_after_it_goes_stale(env: Env) {
    let wf = Workflows::new(env.producer.clone());
    let s = echo_then_other(&wf).await;
    let d = lease_one(&env, "work", "w1").await;
    let job = finish(&env, "w1", &d, "42").await;
    // (w1 dies here.) A due check before the entry is stale hands out
    // nothing; one after it does.
    let r = due_check(&env, "w2").await;
    assert!(r.outbox.is_empty());
    let wake = r.next_due.expect("a wake-up for the outbox");
    assert!(
        wake > chrono::Utc::now() + chrono::Duration::seconds(5),
        "{wake}"
    );
    tokio::time::sleep(runner::queue::workflow::OUTBOX_STALE + Duration::from_millis(300)).await;
    let r = due_check(&env, "w2").await;
    assert_eq!(r.outbox, vec![job.id]);
    wf.drain("work", &r.outbox).await.unwrap();
    let next = lease_one(&env, "work", "w2").await;
    assert_eq!(next.job.task.as_deref(), Some("other"));
    assert_eq!(next.job.input, "42", "the chain hands on the output");
    assert!(due_entries(&env).await.is_empty());
    let st = wf.status(s.id).await.unwrap().unwrap();
    assert_eq!(st.done, 1);
}

/// Every step's job of a workflow is in the id index from the start, with
/// its queue: a step launched later is found by id without a scan of the
/// queues, and no launch writes the index again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_steps_are_indexed_when_it_starts() {
    let server = RedisServer::start();
    let env = crate::queue_conformance::redis_on(&server).await;
    let wf = Workflows::new(env.producer.clone());
    wf.submit(
        Caller::Admin,
        &request(json!({"workflow": {
            "chain": [{"task": "echo"}, {"task": "other"}],
            "on_error": {"task": "echo"}
        }})),
    )
    .await
    .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let index = || {
        let mut c = client.get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("runner:{ids}:*")
            .query(&mut c)
            .unwrap();
        let mut entries: Vec<(String, String)> = Vec::new();
        for k in keys {
            let h: std::collections::HashMap<String, String> =
                redis::cmd("HGETALL").arg(&k).query(&mut c).unwrap();
            entries.extend(h);
        }
        entries.sort();
        entries
    };
    // Both steps and the error callback, though only the first is launched.
    let before = index();
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().all(|(_, q)| q == "work"), "{before:?}");
    let d = lease_one(&env, "work", "w1").await;
    assert!(before.iter().any(|(id, _)| *id == d.job.id.to_string()));
    finish(&env, "w1", &d, "1").await;
    wf.drain_queue("work").await.unwrap();
    let next = lease_one(&env, "work", "w1").await;
    assert_eq!(next.job.task.as_deref(), Some("other"));
    assert!(
        before.iter().any(|(id, _)| *id == next.job.id.to_string()),
        "the step launched later was indexed before: {before:?}"
    );
    assert_eq!(index(), before, "the launch wrote no entry of its own");
    assert_eq!(
        env.broker.get(next.job.id).await.unwrap().unwrap().state,
        JobState::Started
    );
}

/// `wf_mark` tells the one call that moved a group's count (or added an
/// uncounted mark) apart from every repeat: the call that completes a
/// group is the only one to see its full count with `fresh` set.
async fn a_marks_first_call_alone_is_fresh(env: Env) {
    use runner::queue::{MarkKind, WfMark};
    let wf = Workflows::new(env.producer.clone());
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {"task": "echo"}})),
        )
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let mark = |kind, field: &str, counter: Option<&str>| WfMark {
        kind,
        field: field.into(),
        value: "1".into(),
        counter: counter.map(Into::into),
    };
    let marked = |marks: Vec<WfMark>| {
        let b = env.broker.clone();
        async move {
            let made = b.wf_read(s.id).await.unwrap().unwrap().made.unwrap();
            let m = b.wf_mark(s.id, made, &marks, ttl).await.unwrap().unwrap();
            (m.counts, m.fresh)
        }
    };
    let x = || mark(MarkKind::Success, "r:x", Some("n:g"));
    let y = || mark(MarkKind::Success, "r:y", Some("n:g"));
    assert_eq!(marked(vec![x()]).await, (vec![1], vec![true]));
    assert_eq!(marked(vec![x()]).await, (vec![1], vec![false]), "a repeat");
    // A repeat beside a new mark of the same group: both see it moved.
    assert_eq!(marked(vec![y(), x()]).await, (vec![2, 2], vec![true, true]));
    assert_eq!(
        marked(vec![y(), x()]).await,
        (vec![2, 2], vec![false, false])
    );
    // A completed step counts in its group like a member.
    let c = || mark(MarkKind::Complete, "c:z", Some("n:g"));
    assert_eq!(marked(vec![c()]).await, (vec![3], vec![true]));
    assert_eq!(marked(vec![c()]).await, (vec![3], vec![false]));
    // Without a counter: the mark itself.
    let alone = || mark(MarkKind::Success, "r:w", None);
    assert_eq!(marked(vec![alone()]).await, (vec![0], vec![true]));
    assert_eq!(marked(vec![alone()]).await, (vec![0], vec![false]));
    // A member's first outcome stays: a member that failed the workflow
    // and then succeeded (a replayed dead letter) is still shown failed.
    let mut failure = mark(MarkKind::Failure, "r:v", None);
    failure.value = "failed".into();
    assert_eq!(marked(vec![failure]).await, (vec![0], vec![true]));
    let success = mark(MarkKind::Success, "r:v", Some("n:g"));
    assert_eq!(marked(vec![success]).await, (vec![3], vec![false]));
    let fields = env.broker.wf_fields(s.id, &["r:v".into()]).await.unwrap();
    assert_eq!(fields, [Some("failed".to_string())]);
}

/// A group of thousands of jobs launches whole: every job's launch is
/// recorded (in calls of a bounded size on Redis, whose scripts take at
/// most 8,000 values at once), so the workflow's status shows them and a
/// revoke finds them all. Before, the submit failed once the jobs were
/// queued, and a revoke left every one of them to run.
async fn a_group_of_thousands_launches_whole(env: Env) {
    const N: usize = 5000;
    let wf = Workflows::new(env.producer.clone());
    let members: Vec<Value> = (0..N)
        .map(|i| json!({"task": "echo", "input": i}))
        .collect();
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {"group": members}})),
        )
        .await
        .unwrap();
    assert_eq!(s.total, N as u64);
    let stored = env.broker.wf_read(s.id).await.unwrap().unwrap();
    let launched = stored.fields.keys().filter(|k| k.starts_with("l:")).count();
    assert_eq!(launched, N);
    assert_eq!(
        wf.revoke(s.id, false).await.unwrap(),
        Some(WfState::Revoked)
    );
    let r = env
        .broker
        .settle(settle("work", "w", vec![], 100))
        .await
        .unwrap();
    assert!(r.deliveries.is_empty(), "{} still run", r.deliveries.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_group_of_thousands_launches_whole_embedded() {
    a_group_of_thousands_launches_whole(crate::queue_conformance::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_group_of_thousands_launches_whole_redis() {
    a_group_of_thousands_launches_whole(crate::queue_conformance::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_marks_first_call_alone_is_fresh_embedded() {
    a_marks_first_call_alone_is_fresh(crate::queue_conformance::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_marks_first_call_alone_is_fresh_redis() {
    a_marks_first_call_alone_is_fresh(crate::queue_conformance::redis().await).await;
}

/// The apply that completes a group launches the next step as a first
/// launch: it reads no launch records (the enqueue's lookup of the steps'
/// ids, one `HMGET` of the queue's records, is the only `HMGET`). Applied
/// again, or after a crash that lost the launch records, the next step is
/// still stored once: the enqueue finds its jobs by their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_launch_reads_no_launch_records() {
    let server = RedisServer::start();
    let env = crate::queue_conformance::redis_on(&server).await;
    let wf = Workflows::new(env.producer.clone());
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {"chain": [
                {"group": [{"task": "echo", "input": 1}, {"task": "echo", "input": 2}]},
                {"group": [{"task": "other", "input": 3}, {"task": "other", "input": 4}]}
            ]}})),
        )
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let calls = |cmd: &str| command_calls(&server, cmd);
    let d1 = lease_one(&env, "work", "w1").await;
    let d2 = lease_one(&env, "work", "w1").await;
    let j1 = finish(&env, "w1", &d1, "\"a\"").await;
    let j2 = finish(&env, "w1", &d2, "\"b\"").await;
    let ends = [("work".to_string(), j1), ("work".to_string(), j2)];
    let hmget = calls("hmget");
    wf.apply_ended(&ends).await.unwrap();
    // (The mark reads the record's state and when its tree was made with
    // one `HMGET`.)
    assert_eq!(
        calls("hmget") - hmget,
        2,
        "the mark's read and the enqueue's lookup, and no read of the launch records"
    );
    // Applied again: the launch records are read, and they say the step
    // was launched, so nothing is enqueued.
    let first = calls("hmget");
    wf.apply_ended(&ends).await.unwrap();
    assert_eq!(
        calls("hmget") - first,
        2,
        "the mark's read, and a repeat reads the launch records"
    );
    // A crash between the enqueue and the launch records: the repeat
    // finds the jobs by their ids.
    let wf_key = format!("runner:{{wf:{}}}", s.id);
    let launched: Vec<String> = redis::cmd("HKEYS")
        .arg(&wf_key)
        .query::<Vec<String>>(&mut client.get_connection().unwrap())
        .unwrap()
        .into_iter()
        .filter(|f| f.starts_with("l:"))
        .collect();
    assert_eq!(launched.len(), 4, "{launched:?}");
    let _: () = redis::cmd("HDEL")
        .arg(&wf_key)
        .arg(&launched)
        .query(&mut client.get_connection().unwrap())
        .unwrap();
    wf.apply_ended(&ends).await.unwrap();
    // The next step's two jobs, each stored once by its id.
    let r = env
        .broker
        .settle(settle("work", "w2", vec![], 10))
        .await
        .unwrap();
    let mut inputs: Vec<&str> = r.deliveries.iter().map(|d| d.job.input.as_str()).collect();
    inputs.sort();
    assert_eq!(inputs, ["3", "4"]);
    assert!(
        r.deliveries
            .iter()
            .all(|d| d.job.task.as_deref() == Some("other"))
    );
}

/// Ends handed to the background applier while it is busy (here: before
/// it first runs, on a runtime of one thread) are applied together: one
/// mark call, so one progress event, for the three members of a group.
async fn ends_handed_over_together_are_applied_together(env: Env) {
    let wf = Workflows::new(env.producer.clone());
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {"chain": [
                {"group": [{"task": "echo"}, {"task": "echo"}, {"task": "echo"}]},
                {"task": "other"}
            ]}})),
        )
        .await
        .unwrap();
    let mut ended = Vec::new();
    for i in 0..3 {
        let d = lease_one(&env, "work", "w1").await;
        ended.push(finish(&env, "w1", &d, &i.to_string()).await);
    }
    let mut events = env.broker.subscribe().await.unwrap();
    for j in ended {
        wf.apply_soon("work", vec![j], vec![]);
    }
    let mut progress = Vec::new();
    while progress.last() != Some(&3) {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the ends are applied")
            .unwrap();
        if ev.id == s.id {
            progress.push(
                ev.progress
                    .expect("a workflow event counts its members")
                    .done,
            );
        }
    }
    assert_eq!(progress, [3], "one mark for the three ends");
    // The applier launches the next step, then empties the outbox.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !due_entries(&env).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the outbox empties");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = lease_one(&env, "work", "w1").await;
    assert_eq!(next.job.task.as_deref(), Some("other"));
}

#[tokio::test(flavor = "current_thread")]
async fn engine_ends_applied_together_embedded() {
    ends_handed_over_together_are_applied_together(crate::queue_conformance::embedded().await)
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn engine_ends_applied_together_redis() {
    ends_handed_over_together_are_applied_together(crate::queue_conformance::redis().await).await;
}

/// The engine's cases on every broker: embedded, Redis, and a Redis
/// Cluster (where a workflow's record and its members' queues live in
/// different slots, on different masters).
macro_rules! on_every_broker {
    ($body:ident, $embedded:ident, $redis:ident, $cluster:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $embedded() {
            $body(crate::queue_conformance::embedded().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $redis() {
            $body(crate::queue_conformance::redis().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $cluster() {
            $body(crate::queue_conformance::cluster().await).await;
        }
    };
}

on_every_broker!(
    chord_callback_runs_once_under_races_and_repeats,
    engine_chord_callback_once_embedded,
    engine_chord_callback_once_redis,
    engine_chord_callback_once_cluster
);
on_every_broker!(
    a_failed_member_runs_on_error_once_and_never_the_callback,
    engine_failed_member_embedded,
    engine_failed_member_redis,
    engine_failed_member_cluster
);
/// A member's record outlives a stale outbox entry by far, whatever result
/// TTL its step asks for: an end nobody applied is applied again from that
/// record, and a record gone by then left the workflow running with
/// nothing to advance it (a step with `result_ttl: 1` lost it in a second).
async fn a_members_record_outlives_its_outbox_entry(env: Env) {
    let wf = Workflows::new(env.producer.clone());
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {"chain": [
                {"task": "echo", "result_ttl": 1},
                {"task": "echo", "result_ttl": 7200}
            ]}})),
        )
        .await
        .unwrap();
    let min = runner::queue::workflow::MEMBER_MIN_RESULT_TTL.as_millis() as u64;
    let d = lease_one(&env, "work", "w1").await;
    assert_eq!(d.job.result_ttl_ms, min);
    let j = finish(&env, "w1", &d, "\"a\"").await;
    let stored = env.broker.get(j.id).await.unwrap().unwrap();
    assert_eq!(stored.result_ttl_ms, min);
    // Nobody applied it here; the stale entry's drain still finds it.
    wf.drain("work", &[j.id]).await.unwrap();
    let next = lease_one(&env, "work", "w1").await;
    assert_eq!(next.job.result_ttl_ms, 7_200_000, "a longer TTL is kept");
    let st = wf.status(s.id).await.unwrap().unwrap();
    assert_eq!(st.done, 1);
}

on_every_broker!(
    a_members_record_outlives_its_outbox_entry,
    engine_member_record_outlives_outbox_embedded,
    engine_member_record_outlives_outbox_redis,
    engine_member_record_outlives_outbox_cluster
);
/// A stale end that fails to apply (here its workflow's stored tree
/// cannot be read) does not hold back the ends behind it: they are
/// applied and removed, and it is put behind them, handed out again after
/// `OUTBOX_RETRY` rather than at every due check. (Before, the drain
/// stopped at the first failure and removed nothing, so one such entry
/// held back its queue's stale ends for good.)
async fn an_end_that_fails_to_apply_does_not_hold_back_the_others(env: Env) {
    let bad = runner::queue::JobId::new();
    assert!(
        env.broker
            .wf_create(bad, "{not a tree", 1, 0)
            .await
            .unwrap()
    );
    let mut member = runner::queue::Job::new("work", "1", chrono::Utc::now());
    member.task = Some("echo".into());
    member.workflow = Some(runner::queue::job::WorkflowRef {
        id: bad,
        path: "workflow".into(),
    });
    env.broker.enqueue(vec![member.clone()]).await.unwrap();
    let wf = Workflows::new(env.producer.clone());
    let s = echo_then_other(&wf).await;
    // Both end; nobody applies them (their worker died).
    let d = lease_one(&env, "work", "w1").await;
    assert_eq!(d.job.id, member.id);
    finish(&env, "w1", &d, "1").await;
    let d = lease_one(&env, "work", "w1").await;
    let good = finish(&env, "w1", &d, "42").await;
    tokio::time::sleep(runner::queue::workflow::OUTBOX_STALE + Duration::from_millis(300)).await;
    let r = due_check(&env, "w2").await;
    // (Both may have ended in one millisecond: in either order.)
    let mut stale = r.outbox.clone();
    stale.sort();
    let mut want = vec![member.id, good.id];
    want.sort();
    assert_eq!(stale, want);
    Workflows::new(env.producer.clone())
        .drain("work", &r.outbox)
        .await
        .unwrap();
    // The good one advanced its workflow.
    let next = lease_one(&env, "work", "w2").await;
    assert_eq!(next.job.task.as_deref(), Some("other"));
    assert_eq!(next.job.input, "42");
    let last = finish(&env, "w2", &next, "true").await;
    wf.apply_ended(&[("work".into(), last)]).await.unwrap();
    assert_eq!(
        wf.status(s.id).await.unwrap().unwrap().state,
        WfState::Succeeded
    );
    // The bad one is still there, behind: not handed out now, and the
    // queue wakes for it when its retry is due.
    let r = due_check(&env, "w3").await;
    assert!(r.outbox.is_empty(), "{:?}", r.outbox);
    let wake = r.next_due.expect("a wake-up for the entry put behind");
    let retry = chrono::Duration::from_std(runner::queue::workflow::OUTBOX_RETRY).unwrap();
    let now = chrono::Utc::now();
    assert!(
        wake > now + retry - chrono::Duration::seconds(15) && wake <= now + retry,
        "{wake} vs now {now}"
    );
    assert!(
        due_entries(&env).await.is_empty(),
        "the entry is not stale before its retry"
    );
}

/// Outbox entries whose members are waiting again (dead letters replayed
/// before their ends were applied) are put behind when drained, not left
/// among the oldest: with a full batch of them, draining the queue's
/// outbox (after a purge or a revoke) went round the same batch for
/// ever. A member's next end makes its entry due again and advances the
/// workflow.
async fn an_entry_whose_member_runs_again_is_put_behind(env: Env) {
    let n = runner::queue::workflow::OUTBOX_BATCH + 1;
    let members: Vec<Value> = (0..n)
        .map(|i| json!({"task": "echo", "input": {"n": i}}))
        .collect();
    let wf = Workflows::new(env.producer.clone());
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {"group": members}})),
        )
        .await
        .unwrap();
    let r = env
        .broker
        .settle(settle("work", "w1", vec![], n))
        .await
        .unwrap();
    assert_eq!(r.deliveries.len(), n);
    // All fail for good; nobody applies their ends (their worker dies).
    crate::queue_conformance::settle_dead(&env.broker, &r.deliveries).await;
    let ids: Vec<_> = r.deliveries.iter().map(|d| d.job.id).collect();
    assert_eq!(env.broker.replay("work", &ids).await.unwrap().len(), n);
    tokio::time::timeout(Duration::from_secs(20), wf.drain_queue("work"))
        .await
        .expect("the drain ends")
        .unwrap();
    assert!(
        due_entries(&env).await.is_empty(),
        "the entries are put behind"
    );
    let st = wf.status(s.id).await.unwrap().unwrap();
    assert_eq!(st.state, WfState::Running);
    assert_eq!(st.done, 0);
    // One runs again and succeeds; its worker dies too. Its entry is due
    // from that end, and applying it counts it.
    let d = lease_one(&env, "work", "w2").await;
    let job = finish(&env, "w2", &d, "42").await;
    assert_eq!(due_entries(&env).await, vec![job.id]);
    wf.drain_queue("work").await.unwrap();
    let st = wf.status(s.id).await.unwrap().unwrap();
    assert_eq!(st.done, 1);
    assert!(due_entries(&env).await.is_empty());
}

on_every_broker!(
    an_entry_whose_member_runs_again_is_put_behind,
    engine_outbox_member_running_again_embedded,
    engine_outbox_member_running_again_redis,
    engine_outbox_member_running_again_cluster
);
on_every_broker!(
    an_end_that_fails_to_apply_does_not_hold_back_the_others,
    engine_outbox_failure_is_put_behind_embedded,
    engine_outbox_failure_is_put_behind_redis,
    engine_outbox_failure_is_put_behind_cluster
);
on_every_broker!(
    an_unapplied_end_is_applied_after_it_goes_stale,
    engine_stale_outbox_embedded,
    engine_stale_outbox_redis,
    engine_stale_outbox_cluster
);

/// A key names a workflow while its record is kept: after that, the same
/// key starts a new workflow with the same id (and a new tree, made at
/// another time). An engine that had applied the first workflow's ends
/// kept its tree and advanced the second with it: the next step's id was
/// the first workflow's, whose job had ended, so nothing ran and the
/// workflow stayed running. A late end of the first workflow's job must
/// not advance the second either.
async fn a_keys_workflow_made_again_is_advanced_with_its_own_tree(env: Env) {
    let api = Workflows::new(env.producer.clone());
    let worker = Workflows::new(env.producer.clone());
    let req = request(json!({
        "workflow": {"chain": [{"task": "echo"}, {"task": "other"}]},
        "idempotency_key": "nightly",
        "ttl_secs": 1,
    }));
    let first = api.submit(Caller::Admin, &req).await.unwrap();
    assert!(first.created);
    let d = lease_one(&env, "work", "w1").await;
    let old_echo = finish(&env, "w1", &d, "1").await;
    worker
        .apply_ended(&[("work".into(), old_echo.clone())])
        .await
        .unwrap();
    let d = lease_one(&env, "work", "w1").await;
    assert_eq!(d.job.input, "1");
    let other = finish(&env, "w1", &d, "2").await;
    worker.apply_ended(&[("work".into(), other)]).await.unwrap();
    let st = worker.status(first.id).await.unwrap().unwrap();
    assert_eq!(st.state, WfState::Succeeded);
    // The record expires; the key starts the workflow again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(worker.status(first.id).await.unwrap().is_none());
    let again = Workflows::new(env.producer.clone())
        .submit(Caller::Admin, &req)
        .await
        .unwrap();
    assert!(again.created);
    assert_eq!(again.id, first.id);
    // A late repeat of the first workflow's end is not this one's.
    worker
        .apply_ended(&[("work".into(), old_echo)])
        .await
        .unwrap();
    let st = worker.status(again.id).await.unwrap().unwrap();
    assert_eq!((st.state, st.done), (WfState::Running, 0));
    let d = lease_one(&env, "work", "w1").await;
    assert_eq!(d.job.task.as_deref(), Some("echo"));
    let echo = finish(&env, "w1", &d, "3").await;
    worker.apply_ended(&[("work".into(), echo)]).await.unwrap();
    let d = lease_one(&env, "work", "w1").await;
    assert_eq!(d.job.task.as_deref(), Some("other"));
    assert_eq!(d.job.input, "3", "the second workflow's output");
    let st = worker.status(again.id).await.unwrap().unwrap();
    assert_eq!((st.state, st.done), (WfState::Running, 1));
}

on_every_broker!(
    a_keys_workflow_made_again_is_advanced_with_its_own_tree,
    engine_key_reused_after_expiry_embedded,
    engine_key_reused_after_expiry_redis,
    engine_key_reused_after_expiry_cluster
);

/// Binds `other` to a new module (a fix deployed), keeping the rest of
/// its binding; the new module's hash.
async fn bind_other_anew(
    registry: &std::sync::Arc<dyn runner::registry::Registry>,
) -> runner::registry::ModuleHash {
    let new = registry.put_module(b"other, fixed").await.unwrap();
    let mut b = registry.task("other").await.unwrap().unwrap();
    b.module = new;
    registry.bind(b).await.unwrap();
    new
}

/// A step launched after its task was bound to another module runs that
/// module, as a job enqueued then would (a fix or a rollback reaches the
/// steps still to come); a step that names its module keeps it. Before,
/// every step ran the module bound when the workflow started.
async fn a_step_runs_its_tasks_module_as_bound_when_it_launches(env: Env) {
    let wf = Workflows::new(env.producer.clone());
    let registry = env.producer.registry();
    let old = registry.task("other").await.unwrap().unwrap().module;
    let s = wf
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {"chain": [
                {"task": "echo"},
                {"group": [
                    {"task": "other"},
                    {"task": "other", "module": old.to_string()},
                ]},
            ]}})),
        )
        .await
        .unwrap();
    let new = bind_other_anew(registry).await;
    let d = lease_one(&env, "work", "w1").await;
    let echo = finish(&env, "w1", &d, "1").await;
    wf.apply_ended(&[("work".into(), echo)]).await.unwrap();
    let mut modules = Vec::new();
    for _ in 0..2 {
        let d = lease_one(&env, "work", "w1").await;
        let path = d.job.workflow.as_ref().unwrap().path.clone();
        modules.push((path, d.job.module.unwrap()));
    }
    modules.sort();
    assert_eq!(
        modules,
        vec![
            ("workflow.chain[1].group[0]".to_string(), new),
            ("workflow.chain[1].group[1]".to_string(), old),
        ],
        "workflow {}",
        s.id
    );
}

/// A tree stored before steps took their task's module at launch keeps
/// the modules it was made with, a step that named its own among them:
/// its record says nothing of which steps named one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_tree_keeps_the_modules_it_was_made_with() {
    let server = RedisServer::start();
    let env = crate::queue_conformance::redis_on(&server).await;
    let registry = env.producer.registry();
    let old = registry.task("other").await.unwrap().unwrap().module;
    let s = Workflows::new(env.producer.clone())
        .submit(
            Caller::Admin,
            &request(json!({"workflow": {"chain": [
                {"task": "echo"},
                {"task": "other", "module": old.to_string()},
            ]}})),
        )
        .await
        .unwrap();
    // The record as the build before stored it.
    let key = format!("runner:{{wf:{}}}", s.id);
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let spec: String = redis::cmd("HGET")
        .arg(&key)
        .arg("spec")
        .query(&mut c)
        .unwrap();
    let older = spec
        .replace(r#","modules_at_launch":true"#, "")
        .replace(r#","pinned":true"#, "");
    assert!(older.len() < spec.len() - 20, "{spec}");
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("spec")
        .arg(&older)
        .query(&mut c)
        .unwrap();
    bind_other_anew(registry).await;
    // Another engine, which reads the tree from the record.
    let wf = Workflows::new(env.producer.clone());
    let d = lease_one(&env, "work", "w1").await;
    let echo = finish(&env, "w1", &d, "1").await;
    wf.apply_ended(&[("work".into(), echo)]).await.unwrap();
    let d = lease_one(&env, "work", "w1").await;
    assert_eq!(d.job.task.as_deref(), Some("other"));
    assert_eq!(d.job.module, Some(old));
}

on_every_broker!(
    a_step_runs_its_tasks_module_as_bound_when_it_launches,
    engine_step_module_at_launch_embedded,
    engine_step_module_at_launch_redis,
    engine_step_module_at_launch_cluster
);

/// A launch that stored its step's job and failed (or died) before
/// recording it leaves a job the workflow has no launch record of. A
/// revoke of the workflow revokes it too, by its derived id: it never
/// runs. Before, the revoke went by the launch records alone, and the
/// launch's repeat, seeing the workflow revoked, launched and revoked
/// nothing: the step ran.
async fn a_revoke_stops_a_step_launched_without_its_record(env: Env) {
    let wf = Workflows::new(env.producer.clone());
    let s = echo_then_other(&wf).await;
    let d = lease_one(&env, "work", "w1").await;
    let first = finish(&env, "w1", &d, "42").await;
    // The applier stores the next step's job as a launch does, then dies.
    let ids = wf.member_ids(s.id).await.unwrap().unwrap();
    let mut next = runner::queue::Job::new("work", "42", chrono::Utc::now());
    next.id = ids[1];
    next.task = Some("other".into());
    next.workflow = Some(runner::queue::job::WorkflowRef {
        id: s.id,
        path: "workflow.chain[1]".into(),
    });
    env.broker.enqueue(vec![next]).await.unwrap();
    assert_eq!(
        wf.revoke(s.id, false).await.unwrap(),
        Some(WfState::Revoked)
    );
    // The end applied again (a stale entry) changes nothing.
    wf.apply_ended(&[("work".into(), first)]).await.unwrap();
    let r = env
        .broker
        .settle(settle("work", "w2", vec![], 10))
        .await
        .unwrap();
    assert!(r.deliveries.is_empty(), "{:?}", r.deliveries);
    let j = env.broker.get(ids[1]).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Revoked);
    assert_eq!(
        wf.status(s.id).await.unwrap().unwrap().state,
        WfState::Revoked
    );
}

on_every_broker!(
    a_revoke_stops_a_step_launched_without_its_record,
    engine_revoke_without_launch_record_embedded,
    engine_revoke_without_launch_record_redis,
    engine_revoke_without_launch_record_cluster
);

async fn bind_echo(api: &TestApi, names: &[&str]) {
    let bytes = echo_component();
    let (s, v) = api.upload(&bytes).await;
    assert!(s.is_success(), "{v}");
    for name in names {
        let (s, v) = api
            .bind(name, json!({ "module": module_hash(&bytes) }))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

async fn start_workflow(api: &TestApi, body: Value) -> Value {
    let (s, v) = api
        .call(
            api.req(reqwest::Method::POST, "/v1/workflows", Some(SUBMIT))
                .json(&body),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    v
}

/// The jobs of task `task` (`GET /v1/jobs?task=`).
async fn jobs_of(api: &TestApi, task: &str) -> Vec<Value> {
    let (s, list) = api
        .call(api.req(
            reqwest::Method::GET,
            &format!("/v1/jobs?task={task}"),
            Some(SUBMIT),
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list["jobs"].as_array().unwrap().clone()
}

async fn workflow(api: &TestApi, id: &str, query: &str) -> Value {
    let (s, v) = api
        .call(api.req(
            reqwest::Method::GET,
            &format!("/v1/workflows/{id}{query}"),
            Some(SUBMIT),
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// The bulk-generation scenario: 62 tasks in 13 batches of 5 (the last of
/// 2), a chain of groups, then a finaliser that collects every batch's
/// results. An event stream sees the count after each batch; the
/// finaliser runs once with all 62 results, in order.
async fn bulk_generation_in_batches(api: &TestApi) {
    bind_echo(api, &["generate", "finalise"]).await;
    let batches: Vec<Value> = (0..13)
        .map(|b| {
            let members: Vec<Value> = (0..5)
                .map(|i| b * 5 + i)
                .filter(|n| *n < 62)
                .map(|n| {
                    // The first batch waits a little: the stream below is
                    // open before anything ends.
                    let mut step = json!({"task": "generate", "input": {"n": n}});
                    if b == 0 {
                        step["countdown"] = json!(0.5);
                    }
                    step
                })
                .collect();
            json!({ "group": members })
        })
        .collect();
    let mut chain = batches;
    chain.push(json!({"task": "finalise", "collect": true}));
    let v = start_workflow(
        api,
        json!({"workflow": {"chain": chain}, "idempotency_key": "project-7"}),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["total"], json!(63));
    assert_eq!(v["created"], json!(true));
    // A retried request starts nothing new.
    let again = start_workflow(
        api,
        json!({"workflow": {"chain": [{"task": "generate"}]}, "idempotency_key": "project-7"}),
    )
    .await;
    assert_eq!(again["id"], json!(id));
    assert_eq!(again["created"], json!(false));
    let res = api
        .event_stream(&format!("/v1/workflows/{id}/events"))
        .await;
    let body = tokio::time::timeout(Duration::from_secs(60), res.text())
        .await
        .expect("the stream ends when the workflow does")
        .unwrap();
    let mut done_seen = Vec::new();
    let mut event = "";
    for line in body.lines() {
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim();
        } else if let Some(d) = line.strip_prefix("data:") {
            let d: Value = serde_json::from_str(d.trim()).unwrap();
            if event == "progress" || event == "workflow" {
                done_seen.push(d["done"].as_u64().unwrap());
            }
        }
    }
    assert!(!body.contains("event: lagged"), "{body}");
    // After each batch the count is a multiple of 5 (a batch starts only
    // when the one before completed), then 62, then the finaliser.
    for want in (5..=60).step_by(5).chain([62, 63]) {
        assert!(
            done_seen.contains(&want),
            "no count {want} in {done_seen:?}"
        );
    }
    let st = workflow(api, &id, "?wait=30s").await;
    assert_eq!(st["state"], json!("succeeded"), "{st}");
    assert_eq!(
        (st["done"].clone(), st["total"].clone()),
        (json!(63), json!(63))
    );
    // The finaliser echoes what it got: 13 batches, 62 results in order.
    let batches = st["result"].as_array().expect("a list of batches");
    assert_eq!(batches.len(), 13);
    let all: Vec<u64> = batches
        .iter()
        .flat_map(|b| b.as_array().unwrap().iter())
        .map(|r| r["n"].as_u64().unwrap())
        .collect();
    assert_eq!(all, (0..62).collect::<Vec<u64>>());
    let finals = jobs_of(api, "finalise").await;
    assert_eq!(finals.len(), 1, "{finals:?}");
    assert_eq!(st["tree"]["steps"][13]["state"], json!("succeeded"));
}

/// Through a real worker: a chord whose member fails for good never runs
/// its callback; its error callback runs once and gets the failure; the
/// workflow says which member failed.
async fn a_chord_with_a_failing_member(api: &TestApi) {
    bind_echo(api, &["part", "merge", "alert"]).await;
    let failing = task_error_component(false, "the printer is on fire");
    let (s, v) = api.upload(&failing).await;
    assert!(s.is_success(), "{v}");
    let (s, v) = api
        .bind("broken", json!({ "module": module_hash(&failing) }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = start_workflow(
        api,
        json!({"workflow": {
            "chord": [{"task": "part"}, {"task": "broken"}, {"task": "part"}],
            "callback": {"task": "merge"},
            "on_error": {"task": "alert", "input": {"to": "ops"}, "previous": "failure"}
        }}),
    )
    .await;
    let id = v["id"].as_str().unwrap();
    let st = workflow(api, id, "?wait=30s").await;
    assert_eq!(st["state"], json!("failed"), "{st}");
    assert_eq!(st["failed"], json!("workflow.chord[1]"));
    let broken = &st["tree"]["steps"][1];
    assert_eq!(broken["state"], json!("failed"), "{st}");
    assert!(
        broken["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the printer is on fire"),
        "{st}"
    );
    // The error callback: launched once (just after the failure is
    // recorded), with its input and the failure.
    let mut st = st;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while st["tree"]["on_error"]["job"].is_null() {
        assert!(
            std::time::Instant::now() < deadline,
            "no error callback: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = workflow(api, id, "").await;
    }
    let alert = st["tree"]["on_error"]["job"].as_str().unwrap();
    let job = api.wait(alert).await;
    assert_eq!(job["state"], json!("SUCCESS"), "{job}");
    assert_eq!(job["result"]["to"], json!("ops"));
    assert_eq!(job["result"]["failure"]["step"], json!("workflow.chord[1]"));
    // Let the other members end, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (task, want) in [("merge", 0), ("alert", 1)] {
        let jobs = jobs_of(api, task).await;
        assert_eq!(jobs.len(), want, "{task}: {jobs:?}");
    }
    let st = workflow(api, id, "").await;
    assert_eq!(st["tree"]["steps"][3]["state"], json!("waiting"), "{st}");
}

/// Revoking a running workflow stops its running job (`terminate`) and
/// nothing after it ever starts.
async fn revoke_a_running_workflow(api: &TestApi) {
    bind_echo(api, &["after"]).await;
    let sleeper = guest_bytes("sleeper");
    let (s, v) = api.upload(&sleeper).await;
    assert!(s.is_success(), "{v}");
    let (s, v) = api
        .bind("nap", json!({ "module": module_hash(&sleeper) }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = start_workflow(
        api,
        json!({"workflow": {"chain": [{"task": "nap", "input": {"ms": 20000}}, {"task": "after"}]}}),
    )
    .await;
    let id = v["id"].as_str().unwrap();
    let st = workflow(api, id, "").await;
    let nap = st["tree"]["steps"][0]["job"].as_str().unwrap().to_string();
    api.wait_started(&nap).await;
    let (s, v) = api
        .call(api.req(
            reqwest::Method::POST,
            &format!("/v1/workflows/{id}/revoke?terminate=true"),
            Some(ADMIN),
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], json!("revoked"));
    let job = api.wait(&nap).await;
    assert_eq!(job["state"], json!("REVOKED"), "{job}");
    let st = workflow(api, id, "?wait=10s").await;
    assert_eq!(st["state"], json!("revoked"));
    assert_eq!(st["tree"]["steps"][1]["state"], json!("waiting"), "{st}");
    // Revoking again keeps the end; an unknown workflow is a 404.
    let (s, v) = api
        .call(api.req(
            reqwest::Method::POST,
            &format!("/v1/workflows/{id}/revoke"),
            Some(ADMIN),
        ))
        .await;
    assert_eq!((s, v["state"].clone()), (StatusCode::OK, json!("revoked")));
    let (s, _) = api
        .call(api.req(
            reqwest::Method::POST,
            &format!("/v1/workflows/{}/revoke", uuid::Uuid::now_v7()),
            Some(ADMIN),
        ))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A group of chains: each chain hands its output on (`previous` adds it
/// to the step's own input; a step without an input gets it as its
/// input), and the group's output is the list of the chains' outputs, in
/// order; nested groups complete their parents.
async fn a_group_of_chains_hands_outputs_on(api: &TestApi) {
    bind_echo(api, &["step"]).await;
    let chain = |name: &str| {
        json!({"chain": [
            {"task": "step", "input": {"first": name}},
            {"task": "step", "input": {"second": name}, "previous": "before"},
            {"task": "step"}
        ]})
    };
    let v = start_workflow(
        api,
        json!({"workflow": {"group": [
            chain("x"),
            {"group": [chain("y"), {"task": "step", "input": "z"}]}
        ]}}),
    )
    .await;
    assert_eq!(v["total"], json!(7));
    let id = v["id"].as_str().unwrap();
    let st = workflow(api, id, "?wait=30s").await;
    assert_eq!(st["state"], json!("succeeded"), "{st}");
    assert_eq!(
        st["result"],
        json!([
            {"second": "x", "before": {"first": "x"}},
            [{"second": "y", "before": {"first": "y"}}, "z"]
        ]),
        "{st}"
    );
    assert_eq!(st["tree"]["steps"][1]["state"], json!("succeeded"));
}

/// A workflow's event stream follows the members launched after it
/// opened: `member` events come for a chain's later steps, with their
/// ends. Before, it knew only the members launched when it opened (here
/// the first step alone, which waits a second) and sent nothing of the
/// others.
async fn the_event_stream_follows_members_launched_later(api: &TestApi) {
    bind_echo(api, &["stage"]).await;
    let v = start_workflow(
        api,
        json!({"workflow": {"chain": [
            {"task": "stage", "input": {"n": 1}, "countdown": 1},
            {"task": "stage", "input": {"n": 2}},
            {"task": "stage", "input": {"n": 3}}
        ]}}),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    let res = api
        .event_stream(&format!("/v1/workflows/{id}/events"))
        .await;
    let body = tokio::time::timeout(Duration::from_secs(60), res.text())
        .await
        .expect("the stream ends when the workflow does")
        .unwrap();
    let st = workflow(api, &id, "?wait=30s").await;
    assert_eq!(st["state"], json!("succeeded"), "{st}");
    // The step launched first is what the stream knew when it opened.
    assert_eq!(st["tree"]["steps"][0]["state"], json!("succeeded"), "{st}");
    let job = |i: usize| st["tree"]["steps"][i]["job"].as_str().unwrap().to_string();
    let mut members: Vec<(String, String)> = Vec::new();
    let mut event = "";
    for line in body.lines() {
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim();
        } else if let Some(d) = line.strip_prefix("data:")
            && event == "member"
        {
            let d: Value = serde_json::from_str(d.trim()).unwrap();
            members.push((
                d["id"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            ));
        }
    }
    let states = |job: &str| -> Vec<&str> {
        members
            .iter()
            .filter(|(j, _)| j == job)
            .map(|(_, s)| s.as_str())
            .collect()
    };
    // The middle step ended long before the workflow did: its end is
    // there. The last one's end may come after the workflow's (two
    // channels): it started, at least.
    assert!(states(&job(0)).contains(&"SUCCESS"), "{body}");
    assert!(states(&job(1)).contains(&"SUCCESS"), "{body}");
    assert!(!states(&job(2)).is_empty(), "{body}");
}

on_both_brokers!(
    api_workflow_events_follow_later_members_embedded,
    api_workflow_events_follow_later_members_redis,
    the_event_stream_follows_members_launched_later
);
on_both_brokers!(
    api_bulk_generation_embedded,
    api_bulk_generation_redis,
    bulk_generation_in_batches
);
on_both_brokers!(
    api_failing_chord_embedded,
    api_failing_chord_redis,
    a_chord_with_a_failing_member
);
on_both_brokers!(
    api_group_of_chains_embedded,
    api_group_of_chains_redis,
    a_group_of_chains_hands_outputs_on
);
on_both_brokers!(
    api_revoke_workflow_embedded,
    api_revoke_workflow_redis,
    revoke_a_running_workflow
);

/// Bad trees are refused whole with a 400 that names the step; nothing is
/// enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bad_workflows_are_refused_naming_the_step() {
    let api = TestApi::start(None, "64MiB", false).await;
    bind_echo(&api, &["item"]).await;
    let mut deep = json!({"task": "item"});
    for _ in 0..40 {
        deep = json!({ "chain": [deep] });
    }
    // Within the maximum, but its stored form nests past what serde_json
    // reads back: before, it was taken and then wedged (no member's end
    // could be applied, and no read or revoke could see it).
    let mut chords = json!({"task": "item"});
    for _ in 0..31 {
        chords = json!({ "chord": [chords], "callback": {"task": "item"} });
    }
    let many: Vec<Value> = (0..10_001).map(|_| json!({"task": "item"})).collect();
    let cases = [
        (chords, "workflow: steps nest too deeply to be stored"),
        (
            json!({"chain": [{"task": "item"}, {"group": []}]}),
            "workflow.chain[1].group: an empty group",
        ),
        (deep, "deeper than the maximum of 32"),
        (
            json!({"chain": [{"task": "item"}, {"group": [{"task": "item"}, {"task": "nope"}]}]}),
            "workflow.chain[1].group[1]: unknown task \"nope\"",
        ),
        (
            json!({ "group": many }),
            "workflow.group[10000]: more than the maximum of 10000 jobs",
        ),
        (
            json!({"chord": [{"task": "item"}]}),
            "workflow.callback: a chord needs a callback step",
        ),
        (
            json!({"chain": [{"task": "item", "input": 3, "previous": "x"}]}),
            "workflow.chain[0].input: with \"previous\"",
        ),
        (
            json!({"group": [{"task": "item", "collect": true}]}),
            "workflow.group[0].collect",
        ),
        (
            json!({"chain": [{"task": "item", "countdown": -1}]}),
            "workflow.chain[0]: countdown",
        ),
        (
            json!({"chain": [{"task": "item", "idempotency_key": "k"}]}),
            "workflow.chain[0]: \"idempotency_key\" is set by the workflow",
        ),
        (json!([1]), "workflow: a step is an object"),
        // Before, taken: the inner callback could never run.
        (
            json!({"task": "item", "on_error": {"task": "item", "on_error": {"task": "item"}}}),
            "workflow.on_error.on_error: an error callback has no error callback",
        ),
    ];
    for (tree, want) in cases {
        let (s, v) = api
            .call(
                api.req(reqwest::Method::POST, "/v1/workflows", Some(SUBMIT))
                    .json(&json!({ "workflow": tree })),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{want}: {v}");
        assert!(message(&v).contains(want), "want {want:?} in {v}");
    }
    // A wait too long for a duration is a 400, not a dropped connection.
    let path = format!("/v1/workflows/{}?wait=1e20", uuid::Uuid::now_v7());
    let (s, v) = api
        .call(api.req(reqwest::Method::GET, &path, Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("wait"), "{v}");
    let (s, list) = api
        .call(api.req(reqwest::Method::GET, "/v1/jobs", Some(SUBMIT)))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(list["jobs"].as_array().unwrap().is_empty(), "{list}");
    api.stop().await;
}
