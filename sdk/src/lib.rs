//! # runner-sdk
//!
//! Write a [runner](https://example.invalid/runner) task as a plain Rust
//! function, build it with `cargo build --release --target wasm32-wasip2`,
//! and the result is a WebAssembly component the runner can run.
//!
//! ```no_run
//! use runner_sdk::{task, Context, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     greeting: String,
//! }
//!
//! #[task]
//! fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
//!     ctx.info(format!("greeting {}", input.name));
//!     Ok(Output { greeting: format!("Hello, {}!", input.name) })
//! }
//! ```
//!
//! The input is the job's JSON, parsed with serde (invalid JSON fails the job
//! with serde's message, line and column); the output is serialized back to
//! JSON. A [`TaskError::retry`] asks the runner to try again later, a
//! [`TaskError::fail`] ends the job for good.
//!
//! ## Layout
//!
//! - [`Context`]: the job (id, attempt, queue, schedule), progress and logs.
//! - [`TaskError`], [`HostError`]: how a run or a host call fails.
//! - One module per capability, each usable only if the task's grant allows
//!   it: [`kv`], [`mail`], [`http`], [`pdf`], [`files`], [`jobs`]. A component
//!   imports only the capabilities it calls, and the runner checks them
//!   against the grant when the task is bound.
//!
//! The crate also compiles for the host target so that a task's pure logic
//! can be unit-tested with `cargo test`; calling a capability there panics,
//! since only the runner provides them.

mod bindings;
mod context;
mod error;
mod task;

pub mod files;
pub mod http;
pub mod jobs;
pub mod kv;
pub mod mail;
pub mod pdf;

pub use context::{Context, Deadline, JobInfo, Level};
pub use error::{HostError, TaskError};

/// Turns a function into the component's `run` export.
///
/// The function takes `&Context` and, optionally, an input of any
/// `serde::Deserialize` type, and returns `Result<T, TaskError>` for any
/// `serde::Serialize` output type. One function per component.
///
/// ```no_run
/// use runner_sdk::{task, Context, TaskError};
///
/// #[task]
/// fn run(ctx: &Context, input: Vec<u32>) -> Result<u32, TaskError> {
///     ctx.info("summing");
///     Ok(input.iter().sum())
/// }
/// ```
pub use runner_sdk_macro::task;

/// Used by the `#[task]` expansion; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::task::{run_task, run_task_without_input};

    /// The generated bindings, reachable by the export glue only.
    pub mod bindings {
        pub use crate::bindings::*;
    }
}
