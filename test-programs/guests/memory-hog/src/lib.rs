//! Allocates memory in chunks and writes to every page of it, until the
//! runner's memory limit stops it. With `{"limit_mib": N}` it stops by itself
//! after N MiB and reports what it allocated.

use std::hint::black_box;

use runner_sdk::{Context, TaskError, task};
use serde::{Deserialize, Serialize};

const PAGE: usize = 4096;

#[derive(Deserialize)]
#[serde(default)]
struct Input {
    /// Size of each allocation.
    chunk_kib: usize,
    /// Stop after this much; without it, grow until stopped.
    limit_mib: Option<usize>,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            chunk_kib: 1024,
            limit_mib: None,
        }
    }
}

#[derive(Serialize)]
struct Output {
    allocated_mib: usize,
}

#[task]
fn run(ctx: &Context, input: Option<Input>) -> Result<Output, TaskError> {
    let input = input.unwrap_or_default();
    if input.chunk_kib == 0 {
        return Err(TaskError::fail("`chunk_kib` must be at least 1"));
    }
    let chunk = input.chunk_kib * 1024;
    let limit = input.limit_mib.map(|mib| mib * 1024 * 1024);
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut allocated = 0usize;
    while limit.is_none_or(|limit| allocated < limit) {
        let mut block = vec![0u8; chunk];
        // Touch every page so that the memory is really used.
        for i in (0..block.len()).step_by(PAGE) {
            block[i] = (i / PAGE) as u8 | 1;
        }
        chunks.push(black_box(block));
        allocated += chunk;
    }
    let allocated_mib = allocated / (1024 * 1024);
    ctx.info(format!(
        "allocated {allocated_mib} MiB in {} chunks",
        chunks.len()
    ));
    Ok(Output { allocated_mib })
}
