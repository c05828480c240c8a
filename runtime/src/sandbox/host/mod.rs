//! The host side of the `runner:task` imports: one file per WIT interface.
//!
//! Each file is a thin adapter: it checks that the capability is present
//! and granted for this run ([`Capability`]), then forwards the call to a service
//! behind a small trait (`KvNamespace`, `MailSender`, ...). The services
//! themselves (SMTP, HTTP with its SSRF policy, typst, file roots, ...) live
//! in `runner-host-fns` and in the queue; they are plugged in by whoever
//! builds the run's [`HostEnv`] (the worker), already bound to the task's
//! grant (its namespace, allowed hosts, roots, quota).
//!
//! A guest never gets a fake success: an absent service answers
//! `host-error::unavailable`, an ungranted one `host-error::denied`.

use std::fmt;
use std::sync::Arc;

use super::bindings::HostError;
use super::bindings::runner::task::types;
use super::run::RunState;

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
pub use services::{HostServices, TaskGrants};

/// Whether a run may use one capability, and the service that provides it.
#[derive(Default)]
pub enum Capability<S: ?Sized> {
    /// This runner has no such service configured: `unavailable`.
    #[default]
    NotConfigured,
    /// The service exists but the task's grant does not include it: `denied`.
    NotGranted,
    /// Calls go to this service, already scoped to the task's grant.
    Granted(Arc<S>),
}

impl<S: ?Sized> Capability<S> {
    /// The service for a call to `capability`, or the error the guest gets.
    pub(crate) fn service(&self, capability: &str) -> Result<Arc<S>, HostError> {
        match self {
            Capability::Granted(service) => Ok(Arc::clone(service)),
            Capability::NotConfigured => Err(HostError::unavailable(format!(
                "{capability} is not configured on this runner"
            ))),
            Capability::NotGranted => Err(HostError::denied(format!(
                "this task is not granted `{capability}`"
            ))),
        }
    }
}

impl<S: ?Sized> Clone for Capability<S> {
    fn clone(&self) -> Self {
        match self {
            Capability::NotConfigured => Capability::NotConfigured,
            Capability::NotGranted => Capability::NotGranted,
            Capability::Granted(service) => Capability::Granted(Arc::clone(service)),
        }
    }
}

impl<S: ?Sized> fmt::Debug for Capability<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::NotConfigured => "NotConfigured",
            Capability::NotGranted => "NotGranted",
            Capability::Granted(_) => "Granted",
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
    pub kv: Capability<dyn KvNamespace>,
    pub mail: Capability<dyn MailSender>,
    pub http: Capability<dyn HttpClient>,
    pub pdf: Capability<dyn PdfRenderer>,
    pub files: Capability<dyn FileStore>,
    pub jobs: Capability<dyn JobEnqueuer>,
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

/// `runner:task/types` defines only types.
impl types::Host for RunState {}

/// The guest-visible result of a host call, with the trap channel
/// (`wasmtime::Result`) unused: a missing or failing service is the task's
/// business, not a broken invariant.
pub(crate) type GuestResult<T> = wasmtime::Result<Result<T, HostError>>;

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
            kv: Capability::NotGranted,
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
            kv: Capability::Granted(Arc::new(MemoryKv::default())),
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
}
