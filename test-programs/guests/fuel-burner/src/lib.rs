//! Burns CPU. Without input it never stops: the runner must end it when its
//! fuel (or time) runs out. With `{"rounds": N}` it stops after N rounds and
//! returns a checksum, which makes it a CPU-bound guest for measuring the
//! cost of fuel metering.

use std::hint::black_box;

use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    rounds: Option<u64>,
}

#[derive(Serialize)]
struct Output {
    rounds: u64,
    checksum: u64,
}

#[task]
fn run(_ctx: &Context, input: Option<Input>) -> Result<Output, TaskError> {
    let limit = input.unwrap_or_default().rounds;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rounds: u64 = 0;
    // `black_box` keeps the optimiser from proving the loop useless and
    // deleting it.
    while limit.is_none_or(|limit| rounds < limit) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state = black_box(state);
        rounds += 1;
    }
    Ok(Output {
        rounds,
        checksum: state,
    })
}
