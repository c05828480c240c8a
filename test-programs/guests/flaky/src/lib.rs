//! Asks for a retry until attempt `succeed_on_attempt` (default 3), then
//! succeeds: `{"succeed_on_attempt": 3}` fails attempts 1 and 2 with
//! `retry` and returns `{"attempt": 3}` on the third.

use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(default)]
struct Input {
    succeed_on_attempt: u32,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            succeed_on_attempt: 3,
        }
    }
}

#[derive(Serialize)]
struct Output {
    attempt: u32,
}

#[task]
fn run(ctx: &Context, input: Option<Input>) -> Result<Output, TaskError> {
    let wanted = input.unwrap_or_default().succeed_on_attempt;
    let attempt = ctx.job().attempt;
    if attempt < wanted {
        ctx.warn(format!("attempt {attempt}: not yet, asking for a retry"));
        return Err(TaskError::retry(format!(
            "flaky: attempt {attempt} of {wanted}, try again"
        )));
    }
    ctx.info(format!("attempt {attempt}: succeeding"));
    Ok(Output { attempt })
}
