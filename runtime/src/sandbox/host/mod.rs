//! The host side of the `runner:task` imports: one file per WIT interface.
//!
//! Each file is a thin adapter: it checks that the capability is present
//! and granted for this run ([`Service`]), then forwards the call to a service
//! behind a small trait (`KvNamespace`, `MailSender`, ...). The services
//! themselves (SMTP, HTTP with its SSRF policy, typst, file roots, ...) live
//! in `runner-host-fns` and in the queue; they are plugged in by whoever
//! builds the run's [`HostEnv`] (the worker), already bound to the task's
//! grant (its namespace, allowed hosts, roots, quota).
//!
//! A guest never gets a fake success: an absent service answers
//! `host-error::unavailable`, an ungranted one `host-error::denied`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use tracing::Instrument as _;

use runner_host_fns as fns;

use super::bindings::HostError;
use super::bindings::runner::task::types;
use super::run::{CancelToken, RunState, Stopped};
use crate::queue::job::MAX_MESSAGE_BYTES;

pub mod context;
pub mod files;
pub mod http;
pub mod jobs;
pub mod kv;
pub mod mail;
pub mod pdf;
pub mod services;

pub use context::{LogLevel, LogLine, Progress, ProgressSink};
pub use files::FileStore;
pub use http::HttpClient;
pub use jobs::JobEnqueuer;
pub use kv::KvNamespace;
pub use mail::MailSender;
pub use pdf::PdfRenderer;
pub use services::HostServices;

/// Whether a run may use one capability, and the service that provides it.
#[derive(Default)]
pub enum Service<S: ?Sized> {
    /// This runner has no such service configured: `unavailable`.
    #[default]
    NotConfigured,
    /// The service exists but the task's grant does not include it: `denied`.
    NotGranted,
    /// Calls go to this service, already scoped to the task's grant.
    Granted(Arc<S>),
}

impl<S: ?Sized> Service<S> {
    /// The service for a call to `capability`, or the error the guest gets.
    pub(crate) fn service(&self, capability: &str) -> Result<Arc<S>, HostError> {
        match self {
            Service::Granted(service) => Ok(Arc::clone(service)),
            Service::NotConfigured => Err(HostError::unavailable(format!(
                "{capability} is not configured on this runner"
            ))),
            Service::NotGranted => Err(HostError::denied(format!(
                "this task is not granted `{capability}`"
            ))),
        }
    }
}

impl<S: ?Sized> Service<S> {
    /// What a run may use of a service the process has or not (`service`),
    /// under the task's grant (`grant`, when it gives the capability):
    /// `adapt` scopes the service to the grant.
    pub(crate) fn bind<P, G>(
        service: &Option<Arc<P>>,
        grant: Option<&G>,
        adapt: impl FnOnce(Arc<P>, &G) -> Arc<S>,
    ) -> Service<S> {
        match (service, grant) {
            (None, _) => Service::NotConfigured,
            (Some(_), None) => Service::NotGranted,
            (Some(service), Some(grant)) => Service::Granted(adapt(Arc::clone(service), grant)),
        }
    }
}

impl<S: ?Sized> Clone for Service<S> {
    fn clone(&self) -> Self {
        match self {
            Service::NotConfigured => Service::NotConfigured,
            Service::NotGranted => Service::NotGranted,
            Service::Granted(service) => Service::Granted(Arc::clone(service)),
        }
    }
}

impl<S: ?Sized> fmt::Debug for Service<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::NotConfigured => "NotConfigured",
            Service::NotGranted => "NotGranted",
            Service::Granted(_) => "Granted",
        })
    }
}

/// Everything one run may reach outside its sandbox. The default reaches
/// nothing: progress goes nowhere, every capability is `unavailable`.
/// Cheap to clone (`Arc`s).
#[derive(Clone, Default)]
pub struct HostEnv {
    /// Receives each `context.progress` call as it happens.
    pub progress: Option<ProgressSink>,
    pub kv: Service<dyn KvNamespace>,
    pub mail: Service<dyn MailSender>,
    pub http: Service<dyn HttpClient>,
    pub pdf: Service<dyn PdfRenderer>,
    pub files: Service<dyn FileStore>,
    pub jobs: Service<dyn JobEnqueuer>,
}

impl fmt::Debug for HostEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostEnv")
            .field("progress", &self.progress.is_some())
            .field("kv", &self.kv)
            .field("mail", &self.mail)
            .field("http", &self.http)
            .field("pdf", &self.pdf)
            .field("files", &self.files)
            .field("jobs", &self.jobs)
            .finish()
    }
}

impl From<fns::HostError> for HostError {
    fn from(e: fns::HostError) -> Self {
        match e {
            fns::HostError::Denied(m) => HostError::Denied(m),
            fns::HostError::Invalid(m) => HostError::Invalid(m),
            fns::HostError::Transient(m) => HostError::Transient(m),
            fns::HostError::Permanent(m) => HostError::Permanent(m),
            fns::HostError::Unavailable(m) => HostError::Unavailable(m),
        }
    }
}

/// `runner:task/types` defines only types.
impl types::Host for RunState {}

/// The guest-visible result of a host call. The trap channel
/// (`wasmtime::Result`) only carries the run being stopped (time limit,
/// revoke) while the call waits: a missing or failing service is the task's
/// business, not a broken invariant.
pub(crate) type GuestResult<T> = wasmtime::Result<Result<T, HostError>>;

/// One host call about to be made: what it is, for whom, and until when.
/// Owns everything it needs, so that the call's future does not borrow the
/// store (whose data is not `Sync`).
pub(crate) struct HostCall<S: ?Sized> {
    capability: &'static str,
    function: &'static str,
    task: String,
    job: String,
    deadline: Instant,
    cancel: CancelToken,
    service: Result<Arc<S>, HostError>,
    /// The run's failed calls so far ([`RunState::failed_calls`]).
    failed: Arc<AtomicU32>,
}

/// The failed host calls of one run logged at `info`; the rest go to
/// `debug`. A task that calls a capability it lacks in a loop (or goes on
/// after its soft time limit) fails every call at once, and would
/// otherwise write a line per call to the host's log, uncapped, for as
/// long as it runs.
pub(crate) const FAILED_CALLS_LOGGED: u32 = 20;

impl RunState {
    /// Prepares a call to `capability.function`, with the service `pick`
    /// selects from this run's environment (or the `unavailable`/`denied`
    /// answer when the run has none).
    pub(crate) fn host_call<S: ?Sized>(
        &self,
        capability: &'static str,
        function: &'static str,
        pick: impl FnOnce(&HostEnv) -> &Service<S>,
    ) -> HostCall<S> {
        // Past the soft time limit, nothing more is started: the task is
        // told to finish up, with a message the SDK recognises.
        let service = match self.soft_deadline {
            Some(soft) if Instant::now() >= soft => Err(HostError::denied(format!(
                "soft time limit: the job's soft time limit ({} ms) has passed; finish up",
                soft.saturating_duration_since(self.started).as_millis()
            ))),
            _ => pick(&self.host).service(capability),
        };
        HostCall {
            capability,
            function,
            task: self.job.task.clone(),
            job: self.job.id.clone(),
            deadline: self.deadline,
            cancel: self.cancel.clone(),
            service,
            failed: self.failed_calls.clone(),
        }
    }
}

impl<S: ?Sized> HostCall<S> {
    /// Makes the call: inside a `host_call` span (task, job, capability,
    /// function), raced against the run's wall-clock deadline and its
    /// cancellation, so that a call waiting on the network cannot outlive
    /// the job's time limit (the run then ends `TimeLimit` or `Revoked`,
    /// not with an error the task could swallow). Every call ends with one
    /// event carrying its outcome and duration, and is counted in
    /// `runner_host_calls_total{capability,outcome}` and
    /// `runner_host_call_seconds{capability}`.
    pub(crate) async fn run<T, Fut>(self, call: impl FnOnce(Arc<S>) -> Fut) -> GuestResult<T>
    where
        Fut: Future<Output = Result<T, HostError>>,
    {
        let HostCall {
            capability,
            function,
            task,
            job,
            deadline,
            cancel,
            service,
            failed,
        } = self;
        let span = tracing::info_span!(
            "host_call",
            task = %task,
            job = %job,
            capability,
            function,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let started = Instant::now();
        let result: GuestResult<T> = match service {
            // No call starts once the run is over (a timer past its deadline
            // only fires when the driver turns).
            _ if cancel.is_cancelled() => Err(Stopped::Revoked.into()),
            _ if started >= deadline => Err(Stopped::TimeLimit.into()),
            Err(refused) => Ok(Err(refused)),
            Ok(service) => {
                let call = call(service).instrument(span.clone());
                // Stopping wins a tie: once the deadline has passed, the run
                // is over whatever the call answered.
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => Err(Stopped::Revoked.into()),
                    () = tokio::time::sleep_until(deadline.into()) => Err(Stopped::TimeLimit.into()),
                    answer = call => Ok(answer.map_err(|e| e.capped(MAX_MESSAGE_BYTES))),
                }
            }
        };
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(e)) => e.kind(),
            Err(e) => match e.downcast_ref::<Stopped>() {
                Some(Stopped::TimeLimit) => "time_limit",
                Some(Stopped::Revoked) => "revoked",
                None => "trap",
            },
        };
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        span.record("outcome", outcome);
        span.record("duration_ms", duration_ms);
        metrics::counter!(
            "runner_host_calls_total",
            "capability" => capability,
            "outcome" => outcome,
        )
        .increment(1);
        metrics::histogram!("runner_host_call_seconds", "capability" => capability)
            .record(elapsed.as_secs_f64());
        let _entered = span.enter();
        match &result {
            Ok(Ok(_)) => tracing::debug!(outcome, duration_ms, "host call"),
            Ok(Err(e)) => {
                let before = failed.fetch_add(1, Ordering::Relaxed);
                if before < FAILED_CALLS_LOGGED {
                    tracing::info!(
                        outcome,
                        duration_ms,
                        error = e.message(),
                        "host call failed"
                    );
                    if before + 1 == FAILED_CALLS_LOGGED {
                        tracing::info!(
                            "{FAILED_CALLS_LOGGED} host calls of this run failed: the next failures are logged at debug level (all are counted in runner_host_calls_total)"
                        );
                    }
                } else {
                    tracing::debug!(
                        outcome,
                        duration_ms,
                        error = e.message(),
                        "host call failed"
                    );
                }
            }
            Err(_) => tracing::info!(outcome, duration_ms, "host call stopped"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use futures::future::BoxFuture;

    use super::*;
    use crate::sandbox::bindings::runner::task::context::{Host as _, Level};
    use crate::sandbox::bindings::runner::task::kv::Host as _;
    use crate::sandbox::bindings::runner::task::mail::{Host as _, Message};

    /// An in-memory stand-in for the kv service, to check the adapter's
    /// plumbing only (the real service lives in `runner-host-fns`).
    #[derive(Default)]
    struct MemoryKv(Mutex<HashMap<String, Vec<u8>>>);

    impl KvNamespace for MemoryKv {
        fn set_nx(
            &self,
            key: String,
            value: Vec<u8>,
            _ttl: Option<Duration>,
        ) -> BoxFuture<'_, Result<bool, HostError>> {
            let mut map = self.0.lock().unwrap();
            let stored = !map.contains_key(&key);
            if stored {
                map.insert(key, value);
            }
            Box::pin(async move { Ok(stored) })
        }
        fn set(
            &self,
            key: String,
            value: Vec<u8>,
            _ttl: Option<Duration>,
        ) -> BoxFuture<'_, Result<(), HostError>> {
            self.0.lock().unwrap().insert(key, value);
            Box::pin(async { Ok(()) })
        }
        fn get(&self, key: String) -> BoxFuture<'_, Result<Option<Vec<u8>>, HostError>> {
            let value = self.0.lock().unwrap().get(&key).cloned();
            Box::pin(async move { Ok(value) })
        }
        fn delete(&self, key: String) -> BoxFuture<'_, Result<bool, HostError>> {
            let existed = self.0.lock().unwrap().remove(&key).is_some();
            Box::pin(async move { Ok(existed) })
        }
    }

    fn message() -> Message {
        Message {
            to: Vec::new(),
            cc: Vec::new(),
            bcc: Vec::new(),
            from: None,
            reply_to: None,
            subject: "hi".into(),
            text: Some("hello".into()),
            html: None,
            attachments: Vec::new(),
        }
    }

    #[tokio::test]
    async fn an_absent_service_is_unavailable_never_a_fake_success() {
        let mut state = RunState::for_tests(HostEnv::default());
        let err = state.get("k".into()).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, HostError::Unavailable(m) if m == "kv is not configured on this runner"),
            "{err:?}"
        );
        let err = state.send(message()).await.unwrap().unwrap_err();
        assert!(
            matches!(&err, HostError::Unavailable(m) if m == "mail is not configured on this runner"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_ungranted_service_is_denied_and_a_granted_one_answers() {
        let denied = HostEnv {
            kv: Service::NotGranted,
            ..HostEnv::default()
        };
        let mut state = RunState::for_tests(denied);
        let err = state
            .set_nx("k".into(), b"v".to_vec(), None)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, HostError::Denied(m) if m.contains("`kv`")),
            "{err:?}"
        );

        let granted = HostEnv {
            kv: Service::Granted(Arc::new(MemoryKv::default())),
            ..HostEnv::default()
        };
        let mut state = RunState::for_tests(granted);
        assert!(
            state
                .set_nx("k".into(), b"v".to_vec(), None)
                .await
                .unwrap()
                .unwrap()
        );
        assert!(
            !state
                .set_nx("k".into(), b"w".to_vec(), None)
                .await
                .unwrap()
                .unwrap()
        );
        assert_eq!(
            state.get("k".into()).await.unwrap().unwrap(),
            Some(b"v".to_vec())
        );
    }

    /// A kv service that never answers, like a server that accepted the
    /// connection and went silent.
    struct SilentKv;

    impl KvNamespace for SilentKv {
        fn set_nx(
            &self,
            _: String,
            _: Vec<u8>,
            _: Option<Duration>,
        ) -> BoxFuture<'_, Result<bool, HostError>> {
            Box::pin(std::future::pending())
        }
        fn set(
            &self,
            _: String,
            _: Vec<u8>,
            _: Option<Duration>,
        ) -> BoxFuture<'_, Result<(), HostError>> {
            Box::pin(std::future::pending())
        }
        fn get(&self, _: String) -> BoxFuture<'_, Result<Option<Vec<u8>>, HostError>> {
            Box::pin(std::future::pending())
        }
        fn delete(&self, _: String) -> BoxFuture<'_, Result<bool, HostError>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_host_call_still_waiting_at_the_deadline_or_a_revoke_stops_the_run() {
        let silent = || HostEnv {
            kv: Service::Granted(Arc::new(SilentKv)),
            ..HostEnv::default()
        };
        let mut state = RunState::for_tests(silent());
        state.deadline = Instant::now() + Duration::from_millis(50);
        let stopped = state.get("k".into()).await.unwrap_err();
        assert_eq!(
            stopped.downcast_ref::<Stopped>(),
            Some(&Stopped::TimeLimit),
            "{stopped:#}"
        );
        assert!(Instant::now() >= state.deadline);

        let mut state = RunState::for_tests(silent());
        let cancel = state.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cancel.cancel();
        });
        let stopped = state.delete("k".into()).await.unwrap_err();
        assert_eq!(stopped.downcast_ref::<Stopped>(), Some(&Stopped::Revoked));

        // Past the deadline, even an answer at hand does not count.
        let mut state = RunState::for_tests(HostEnv {
            kv: Service::Granted(Arc::new(MemoryKv::default())),
            ..HostEnv::default()
        });
        state.deadline = Instant::now();
        let stopped = state.get("k".into()).await.unwrap_err();
        assert_eq!(stopped.downcast_ref::<Stopped>(), Some(&Stopped::TimeLimit));
    }

    #[tokio::test]
    async fn context_records_logs_and_progress() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let host = HostEnv {
            progress: Some(Arc::new(move |p: &Progress| {
                sink.lock().unwrap().push(p.clone())
            })),
            ..HostEnv::default()
        };
        let mut state = RunState::for_tests(host);
        state.progress(1, 4, Some("one".into())).await.unwrap();
        state.log(Level::Info, "hello".into()).await.unwrap();
        // Over the test cap of 1 KiB: dropped and counted.
        state.log(Level::Warn, "x".repeat(2000)).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(state.last_progress.as_ref().map(|p| p.done), Some(1));
        assert_eq!(state.logs.lines.len(), 1);
        assert_eq!(state.logs.lines[0].level, LogLevel::Info);
        assert_eq!(state.logs.dropped, 1);
        let job = state.job().await.unwrap();
        assert_eq!(job.attempt, 1);
    }

    /// An empty line counts against the cap too: a task logging nothing in
    /// a loop used to grow the run's log without bound.
    /// Notes the level and target of every event.
    struct Events(Arc<Mutex<Vec<(tracing::Level, String)>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let meta = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push((*meta.level(), meta.target().to_string()));
        }
    }

    /// A run that fails host calls in a loop (a capability it lacks) logs
    /// the first few at `info`, then says so once; its `context.log`
    /// lines past its cap reach no log at all. Before, every failed call
    /// was an `info` line on the host (10^5 a second), and every guest
    /// line a `debug` one, past any cap.
    #[tokio::test]
    async fn a_run_failing_calls_in_a_loop_logs_a_few() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(Events(seen.clone())),
        );
        let mut state = RunState::for_tests(HostEnv::default());
        for _ in 0..1000 {
            assert!(state.get("k".into()).await.unwrap().is_err());
        }
        for _ in 0..1000 {
            state.log(Level::Info, "x".repeat(100)).await.unwrap();
        }
        let seen = seen.lock().unwrap();
        let count = |level: tracing::Level, target: &str| {
            seen.iter()
                .filter(|(l, t)| *l == level && t.starts_with(target))
                .count()
        };
        assert_eq!(
            count(tracing::Level::INFO, "runner::sandbox::host"),
            FAILED_CALLS_LOGGED as usize + 1
        );
        assert_eq!(count(tracing::Level::DEBUG, "runner::sandbox::host"), 980);
        assert!(!state.logs.lines.is_empty() && state.logs.dropped > 0);
        assert_eq!(
            count(tracing::Level::DEBUG, "runner::guest"),
            state.logs.lines.len()
        );
    }

    #[tokio::test]
    async fn empty_log_lines_count_against_the_cap() {
        let mut state = RunState::for_tests(HostEnv::default());
        for _ in 0..100_000 {
            state.log(Level::Info, String::new()).await.unwrap();
        }
        // The test cap is 1 KiB.
        assert_eq!(
            state.logs.lines.len(),
            1024 / crate::queue::job::LOG_LINE_OVERHEAD
        );
        assert_eq!(state.logs.dropped, 100_000 - state.logs.lines.len() as u64);
    }
}
