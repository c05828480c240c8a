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
//!
//! # TLS
//!
//! Both `ring` and `aws-lc-rs` are compiled into the dependency graph
//! (lettre, reqwest), so rustls cannot pick a crypto provider by itself:
//! the binary must call
//! `rustls::crypto::ring::default_provider().install_default()` once at
//! start-up, before the first mail or HTTPS request. The tests do the same.

pub mod error;
pub mod files;
pub mod http;
pub mod kv;
pub mod mail;
pub mod pdf;
mod serde_secs;
pub mod trace;

pub use error::HostError;
