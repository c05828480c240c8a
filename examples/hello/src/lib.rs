//! Greets whoever the input names: `{"name": "Ada"}` ->
//! `{"greeting": "Hello, Ada!"}`. Logs a line and reports progress.

use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    name: String,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
    attempt: u32,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let name = input.name.trim();
    if name.is_empty() {
        return Err(TaskError::fail("`name` must not be empty"));
    }
    ctx.progress_with(0, 1, "greeting");
    ctx.info(format!("greeting {name}"));
    let greeting = format!("Hello, {name}!");
    ctx.progress_with(1, 1, "done");
    Ok(Output {
        greeting,
        attempt: ctx.job().attempt,
    })
}
