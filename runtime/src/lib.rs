//! The runner: a WASM-sandboxed task runner (Celery + Beat + Flower, where
//! every task is a WebAssembly component).
//!
//! # Layout
//!
//! Imports run one way, from the edges in (`docs/architecture.md` draws it):
//!
//! ```text
//! cli -> app -> api -> worker, scheduler -> producer, deploy
//!     -> registry, sandbox, queue -> names, runner-host-fns
//! ```
//!
//! - [`cli`]: the `runner` command; one file per subcommand.
//! - [`app`]: the one wiring path of every process: from a [`config`] to
//!   the broker, registry, producer, scheduler, host services, sandbox and
//!   worker; [`app::Process`] runs the long-lived parts until a signal.
//! - [`config`]: `runner.toml`, its environment overrides and the
//!   precedence of flags over both.
//! - [`api`]: the HTTP API (axum, OpenAPI by utoipa) and the dashboard.
//! - [`worker`]: leases jobs, runs them in the sandbox, settles outcomes
//!   (`dispatch`, `run`, `settle`, `progress`).
//! - [`scheduler`]: beats (cron or interval, in a time zone) from
//!   `runner.toml` and the API, fired exactly once across replicas (its API
//!   in `mod.rs`, its loop in `fire.rs`).
//! - [`producer`]: enqueueing: a request resolved against the task's
//!   binding and the queues' rate limits into a job, handed to a broker;
//!   child jobs of a running task ([`producer::ChildJobs`]).
//! - [`deploy`]: the checked way into the registry: uploads validated by
//!   the sandbox, bindings refused when the grants miss an import.
//! - [`registry`]: modules by hash, task bindings with their defaults, and
//!   grants with the one capability table ([`registry::Capability`]).
//! - [`sandbox`]: one wasmtime engine per process; compiles each module
//!   once, runs each job in a fresh store with fuel, memory and time
//!   limits. `sandbox::host` has one adapter file per WIT interface onto
//!   the services of `runner-host-fns`.
//! - [`queue`]: the job model and the `Broker` trait, with the Redis
//!   broker and the embedded one. It knows nothing of tasks or modules.
//! - [`names`]: [`names::ModuleHash`] and [`names::TaskName`].
//! - [`builtin`]: the components embedded in the binary (`builtin:NAME`).
//! - [`json_object`]: JSON fields read as objects only (never as arrays).
//!
//! Data takes one path: CLI/HTTP -> producer -> queue -> worker -> sandbox
//! -> host functions -> result.

pub mod api;
pub mod app;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod json_object;
pub mod names;
pub mod producer;
pub mod queue;
pub mod registry;
pub mod sandbox;
pub mod scheduler;
pub mod worker;
pub mod workflow;
