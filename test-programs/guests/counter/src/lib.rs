//! Counts its own runs in kv: run number `n` of job `<id>` claims the key
//! `runs:<id>:<n>` with `set-nx`, trying n = 1, 2, ... until one is free,
//! and returns `{"run": n}`. Two runs at once still get distinct numbers.
//! With `{"fail_first": k}` its first k runs fail for good (a downstream
//! outage: a replay after it succeeds). Needs `grants.kv`.

use runner_sdk::{Context, TaskError, kv, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    fail_first: u32,
}

#[derive(Serialize)]
struct Output {
    run: u32,
}

#[task]
fn run(ctx: &Context, input: Option<Input>) -> Result<Output, TaskError> {
    let fail_first = input.unwrap_or_default().fail_first;
    let id = ctx.job().id.clone();
    for n in 1..=1000 {
        if kv::set_nx(&format!("runs:{id}:{n}"), b"1", None)? {
            if n <= fail_first {
                return Err(TaskError::fail(format!(
                    "run {n}: the downstream service is down"
                )));
            }
            return Ok(Output { run: n });
        }
    }
    Err(TaskError::fail("more than 1000 runs"))
}
