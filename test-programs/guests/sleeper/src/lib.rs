//! Sleeps for `{"ms": N}` milliseconds (WASI monotonic clock), then returns
//! `{"slept_ms": N}`. A sleep longer than the job's time limit must end with
//! "time limit".

use std::time::{Duration, Instant};

use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    ms: u64,
}

#[derive(Serialize)]
struct Output {
    slept_ms: u64,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    ctx.debug(format!("sleeping {} ms", input.ms));
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(input.ms));
    let slept_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Output { slept_ms })
}
