//! Counts its own runs in kv: run number `n` of job `<id>` claims the key
//! `runs:<id>:<n>` with `set-nx`, trying n = 1, 2, ... until one is free,
//! and returns `{"run": n}`. Two runs at once still get distinct numbers.
//! Needs `grants.kv`.

use runner_sdk::{Context, TaskError, kv, task};
use serde::Serialize;

#[derive(Serialize)]
struct Output {
    run: u32,
}

#[task]
fn run(ctx: &Context, _input: Option<serde_json::Value>) -> Result<Output, TaskError> {
    let id = ctx.job().id.clone();
    for n in 1..=1000 {
        if kv::set_nx(&format!("runs:{id}:{n}"), b"1", None)? {
            return Ok(Output { run: n });
        }
    }
    Err(TaskError::fail("more than 1000 runs"))
}
