//! Writes `{"stdout": "...", "stderr": "..."}` to its stdout and stderr as
//! given (no newline added), then returns `{"ok": true}`.

use std::io::Write;

use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    stdout: String,
    stderr: String,
}

#[derive(Serialize)]
struct Output {
    ok: bool,
}

#[task]
fn run(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let written = std::io::stdout()
        .write_all(input.stdout.as_bytes())
        .and_then(|()| std::io::stdout().flush())
        .and_then(|()| std::io::stderr().write_all(input.stderr.as_bytes()));
    written.map_err(|e| TaskError::fail(format!("cannot write: {e}")))?;
    Ok(Output { ok: true })
}
