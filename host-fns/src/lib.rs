//! The host side of every task capability, as plain Rust services.
//!
//! Each service here is what a guest's import (`runner:task/*` in
//! `sdk/wit/task.wit`) is backed by. The services know nothing about wasm:
//! the sandbox's adapters in `runtime/src/sandbox/host/` translate WIT
//! records to these types and [`HostError`] to `types.host-error`. Every
//! service is `Send + Sync`, meant to live behind an `Arc`, and takes the
//! calling task's *grant* as an argument, so that one service serves every
//! task and the policy is checked on every call.
//!
//! # Layout
//!
//! - [`error`]: [`HostError`], the one error every capability returns
//!   (mirrors `host-error`: denied / invalid / transient / permanent /
//!   unavailable).
//! - [`trace`]: the span every host call runs in (capability, operation,
//!   duration, outcome).
//! - [`files`]: named roots, read/write/list/delete, cleanup, disk usage.
//! - [`kv`]: the per-task key-value store (in memory, or on Redis).
//! - [`mail`]: SMTP via lettre, and a dry-run transport writing `.eml` files.
//! - [`http`]: outgoing requests with an allow-list and SSRF defences.
//! - [`pdf`]: the document model rendered to PDF by typst.
//! - [`redis_conn`]: the connection of every Redis client of the runner
//!   (broker, registry, beats, kv): reconnecting, its failed commands
//!   counted.
//!
//! # TLS
//!
//! One crypto provider, `ring`, serves every TLS connection (lettre is
//! built with it, reqwest with none of its own). reqwest takes rustls's
//! process-wide default, so [`install_crypto_provider`] installs `ring` as
//! that default; the HTTP service calls it before building a client, and
//! the binary at start-up.

pub mod error;
pub mod files;
pub mod http;
pub mod kv;
pub mod mail;
pub mod pdf;
pub mod redis_conn;
mod serde_secs;
pub mod trace;

pub use error::HostError;

/// Installs `ring` as rustls's process-wide crypto provider, unless one is
/// installed already. Cheap and idempotent: call it before building any
/// reqwest client.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means another provider was installed first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
