//! The "already done" guard: stores `key` with `set_nx` and says whether this
//! run was the first. `{"key": "remind:42:2026-11-22", "ttl_ms": 172800000}`
//! -> `{"first": true}`, then `{"first": false}` until the key expires.
//! Needs the `kv` grant.

use std::time::Duration;

use runner_sdk::{Context, TaskError, kv, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    key: String,
    ttl_ms: Option<u64>,
}

#[derive(Serialize)]
struct Output {
    first: bool,
    value: Option<String>,
}

#[task]
fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let ttl = input.ttl_ms.map(Duration::from_millis);
    let first = kv::set_nx(&input.key, &ctx.job().id, ttl)?;
    // The value names the job that claimed the key first.
    let value = kv::get_string(&input.key)?;
    if first {
        ctx.info(format!("claimed {}", input.key));
    } else {
        ctx.info(format!("{} was already claimed", input.key));
    }
    Ok(Output { first, value })
}
