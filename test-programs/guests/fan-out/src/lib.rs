//! Enqueues `count` child jobs of task `task` (default `hello`), each with
//! input `{"name": "child <i>"}` (and `countdown_ms` when given), reporting
//! progress as it goes; returns the children's ids. Each child gets the
//! idempotency key `<parent>:<i>` unless `keys` is false (then the runner
//! derives one). Needs the `jobs` grant.

use runner_sdk::{Context, TaskError, jobs, task};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(default)]
struct Input {
    task: String,
    count: u32,
    queue: Option<String>,
    countdown_ms: Option<u64>,
    keys: bool,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            task: "hello".into(),
            count: 3,
            queue: None,
            countdown_ms: None,
            keys: true,
        }
    }
}

#[derive(Serialize)]
struct Output {
    children: Vec<String>,
}

#[task]
fn run(ctx: &Context, input: Option<Input>) -> Result<Output, TaskError> {
    let input = input.unwrap_or_default();
    let parent = ctx.job().id.clone();
    let total = u64::from(input.count);
    let mut children = Vec::new();
    for i in 0..input.count {
        let mut options = jobs::Options::new();
        if input.keys {
            options = options.idempotency_key(format!("{parent}:{i}"));
        }
        if let Some(queue) = &input.queue {
            options = options.queue(queue.clone());
        }
        if let Some(ms) = input.countdown_ms {
            options = options.countdown(std::time::Duration::from_millis(ms));
        }
        let child = serde_json::json!({ "name": format!("child {i}") });
        let id = jobs::enqueue_with(&input.task, &child, options)?;
        ctx.info(format!("enqueued {} job {id}", input.task));
        children.push(id);
        ctx.progress_with(
            u64::from(i) + 1,
            total,
            format!("{} of {total} enqueued", i + 1),
        );
    }
    Ok(Output { children })
}
