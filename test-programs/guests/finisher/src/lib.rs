//! Works in rounds (a little CPU, then a `kv.get`) until a capability call
//! answers `HostError::TimeUp` (the job's soft time limit passed), then
//! returns what it did and what `context.deadline` said before and after:
//! `{"rounds", "time_up", "first", "last"}`. Without a soft limit it stops
//! after `{"max_rounds": N}` rounds (default 1,000,000) and fails.

use std::hint::black_box;

use runner_sdk::{Context, Deadline, HostError, TaskError, kv, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    max_rounds: Option<u64>,
}

#[derive(Serialize)]
struct Seen {
    time_left_ms: u64,
    soft_time_left_ms: Option<u64>,
    fuel_left: Option<u64>,
}

impl From<Deadline> for Seen {
    fn from(d: Deadline) -> Self {
        Seen {
            time_left_ms: d.time_left.as_millis() as u64,
            soft_time_left_ms: d.soft_time_left.map(|t| t.as_millis() as u64),
            fuel_left: d.fuel_left,
        }
    }
}

#[derive(Serialize)]
struct Output {
    rounds: u64,
    time_up: String,
    first: Seen,
    last: Seen,
}

#[task]
fn run(ctx: &Context, input: Option<Input>) -> Result<Output, TaskError> {
    let max = input.unwrap_or_default().max_rounds.unwrap_or(1_000_000);
    let first = Seen::from(ctx.deadline());
    let mut state: u64 = 1;
    for rounds in 1..=max {
        for _ in 0..10_000 {
            state = black_box(state.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        match kv::get("progress") {
            Err(HostError::TimeUp(message)) => {
                return Ok(Output {
                    rounds,
                    time_up: message,
                    first,
                    last: ctx.deadline().into(),
                });
            }
            // Not configured or not granted here: the call is what counts.
            _ => continue,
        }
    }
    Err(TaskError::Fail(format!("no soft time limit in {max} rounds")))
}
