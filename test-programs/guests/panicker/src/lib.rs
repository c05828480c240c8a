//! Panics. The runner must report a trap carrying the panic message
//! (`panicker: deliberate panic: ...`) and stay healthy for the next run.

use runner_sdk::{Context, TaskError, task};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    message: Option<String>,
}

#[task]
fn run(_ctx: &Context, input: Option<Input>) -> Result<(), TaskError> {
    let message = input
        .and_then(|i| i.message)
        .unwrap_or_else(|| "the sky is falling".to_string());
    panic!("panicker: deliberate panic: {message}");
}
