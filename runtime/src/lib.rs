//! The runner: a WASM-sandboxed task runner (Celery + Beat + Flower, where
//! every task is a WebAssembly component).
//!
//! # Layout
//!
//! - [`sandbox`]: one wasmtime engine per process; compiles each module once
//!   (by sha256, cached on disk), runs each job in a fresh store with fuel,
//!   memory and wall-clock limits. `sandbox::host` adapts the WIT imports
//!   onto the plain services of `runner-host-fns`.
//! - [`queue`]: the job model and the `Broker` trait, with a Redis broker
//!   (production) and an embedded in-memory one (`runner dev`).
//! - [`registry`]: modules by hash, task names bound to modules with
//!   defaults and grants.
//! - [`worker`]: pulls jobs, runs them in the sandbox, records outcomes,
//!   retries.
//! - [`scheduler`]: beats (cron or interval, in a time zone) from
//!   `runner.toml` and the API, fired exactly once across replicas.
//! - [`api`]: the HTTP API (axum, OpenAPI by utoipa) over the registry,
//!   the broker and the scheduler.
//! - [`config`]: `runner.toml` with its env overrides; [`app`] wires a
//!   config into a broker, registry, scheduler, worker and API.
//! - [`builtin`]: the built-in tasks and examples embedded in the binary
//!   (`builtin:NAME` modules).
//! - [`cli`]: the `runner` command and its subcommands.
//!
//! Data takes one path: CLI/HTTP -> registry/queue -> worker -> sandbox ->
//! host functions -> result.

pub mod api;
pub mod app;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod queue;
pub mod registry;
pub mod sandbox;
pub mod scheduler;
pub mod worker;
