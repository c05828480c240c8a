//! Enqueues `count` child jobs of task `task` (default `hello`), each with
//! input `{"name": "child <i>"}` (and `countdown_ms` when given), reporting
//! progress as it goes; returns the children's ids. Each child gets the
//! idempotency key `<parent>:<i>` unless `keys` is false (then the runner
//! derives one). With `"chord": "<task>"` it starts a chord instead: the
//! `count` children at once, then one job of that task with input
//! `{"name": "callback", "results": [...]}`, and returns `{"workflow": id}`.
//! Needs the `jobs` grant.

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
    chord: Option<String>,
}

impl Default for Input {
    fn default() -> Self {
        Input {
            task: "hello".into(),
            count: 3,
            queue: None,
            countdown_ms: None,
            keys: true,
            chord: None,
        }
    }
}

#[derive(Serialize)]
struct Output {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    children: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow: Option<String>,
}

#[task]
fn run(ctx: &Context, input: Option<Input>) -> Result<Output, TaskError> {
    let input = input.unwrap_or_default();
    if let Some(callback) = &input.chord {
        let members = (0..input.count)
            .map(|i| jobs::Step::task(&input.task).input(&serde_json::json!({ "name": format!("child {i}") })))
            .collect();
        let callback = jobs::Step::task(callback)
            .input(&serde_json::json!({ "name": "callback" }))
            .previous("results");
        let id = jobs::chord(members, callback)?;
        ctx.info(format!("started workflow {id}"));
        return Ok(Output {
            children: Vec::new(),
            workflow: Some(id),
        });
    }
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
    Ok(Output {
        children,
        workflow: None,
    })
}
