//! The glue between the component's `run` export and a task function. Called
//! only from the `#[task]` expansion.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings;
use crate::{Context, TaskError};

/// Parses the input, runs the task, serializes its output.
pub fn run_task<I, O, F>(input: String, task: F) -> Result<String, bindings::TaskError>
where
    I: DeserializeOwned,
    O: Serialize,
    F: FnOnce(&Context, I) -> Result<O, TaskError>,
{
    run_inner(&input, task).map_err(Into::into)
}

/// For a task function that takes no input: the input is ignored.
pub fn run_task_without_input<O, F>(_input: String, task: F) -> Result<String, bindings::TaskError>
where
    O: Serialize,
    F: FnOnce(&Context) -> Result<O, TaskError>,
{
    let ctx = Context::new();
    task(&ctx)
        .and_then(|output| to_json(&output))
        .map_err(Into::into)
}

pub(crate) fn run_inner<I, O, F>(input: &str, task: F) -> Result<String, TaskError>
where
    I: DeserializeOwned,
    O: Serialize,
    F: FnOnce(&Context, I) -> Result<O, TaskError>,
{
    let input = parse_input(input)?;
    let ctx = Context::new();
    to_json(&task(&ctx, input)?)
}

/// No input counts as `null`, so that `Option<T>` and `()` inputs work when
/// the job was enqueued without one. The runner gives such a job `{}` (the
/// API, `runner call` and `runner run` without `--input`, a beat without
/// input): `{}` that does not fit the type is read as `null` too.
pub(crate) fn parse_input<I: DeserializeOwned>(input: &str) -> Result<I, TaskError> {
    let text = input.trim();
    if text.is_empty() {
        return parse("null");
    }
    let parsed = parse(text);
    if parsed.is_err()
        && text == "{}"
        && let Ok(none) = parse("null")
    {
        return Ok(none);
    }
    parsed
}

fn parse<I: DeserializeOwned>(text: &str) -> Result<I, TaskError> {
    serde_json::from_str(text).map_err(|e| TaskError::fail(format!("invalid input: {e}")))
}

fn to_json<O: Serialize>(output: &O) -> Result<String, TaskError> {
    serde_json::to_string(output)
        .map_err(|e| TaskError::fail(format!("cannot serialize the output: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Greet {
        name: String,
    }

    fn greet(_ctx: &Context, input: Greet) -> Result<serde_json::Value, TaskError> {
        if input.name.is_empty() {
            return Err(TaskError::fail("empty name"));
        }
        Ok(serde_json::json!({ "greeting": format!("Hello, {}!", input.name) }))
    }

    #[test]
    fn runs_and_serializes_the_output() {
        let out = run_inner(r#"{"name": "Ada"}"#, greet).expect("runs");
        assert_eq!(out, r#"{"greeting":"Hello, Ada!"}"#);
    }

    #[test]
    fn invalid_json_fails_with_line_and_column() {
        let err = run_inner("{\n  \"name\": 42\n}", greet).expect_err("bad input");
        assert!(!err.is_retry());
        let msg = err.message();
        assert!(msg.starts_with("invalid input: "), "{msg}");
        assert!(msg.contains("line 2 column"), "{msg}");
    }

    #[test]
    fn syntax_errors_are_reported_too() {
        let err = run_inner("{\"name\": ", greet).expect_err("truncated");
        assert!(err.message().contains("EOF while parsing"), "{err}");
        let err = run_inner::<Greet, (), _>("{}", |_, _| Ok(())).expect_err("missing field");
        assert!(err.message().contains("missing field `name`"), "{err}");
    }

    #[test]
    fn task_errors_pass_through() {
        let err = run_inner(r#"{"name": ""}"#, greet).expect_err("empty");
        assert_eq!(err, TaskError::Fail("empty name".into()));
        let err =
            run_inner::<(), (), _>("", |_, ()| Err(TaskError::retry("later"))).expect_err("retry");
        assert_eq!(err, TaskError::Retry("later".into()));
    }

    #[test]
    fn empty_input_is_null() {
        let out = run_inner::<Option<u32>, _, _>("  ", |_, n| Ok(n.unwrap_or(7))).expect("runs");
        assert_eq!(out, "7");
    }

    /// A job enqueued without input carries `{}`: before, a `()` input and
    /// an `Option<T>` whose `T` has a required field failed on it.
    #[test]
    fn the_runners_empty_object_is_no_input_where_it_does_not_fit() {
        run_inner::<(), _, _>("{}", |_, ()| Ok(())).expect("a unit input");
        let out = run_inner::<Option<Greet>, _, _>(" {} ", |_, g| Ok(g.is_none())).expect("runs");
        assert_eq!(out, "true");
        // Where it fits, it is what it says.
        let out = run_inner::<Option<serde_json::Value>, _, _>("{}", |_, v| Ok(v)).expect("runs");
        assert_eq!(out, "{}");
        // Another input that does not fit still fails.
        let err = run_inner::<(), _, _>("{\"a\":1}", |_, ()| Ok(())).expect_err("not unit");
        assert!(err.message().starts_with("invalid input"), "{err}");
    }

    #[test]
    fn unit_output_is_json_null() {
        let out = run_task_without_input(String::new(), |_| Ok(())).expect("runs");
        assert_eq!(out, "null");
    }

    #[test]
    fn unserializable_output_fails() {
        use std::collections::HashMap;
        let mut map = HashMap::new();
        map.insert((1, 2), "tuple keys are not JSON object keys");
        let err = run_inner::<(), _, _>("null", move |_, ()| Ok(map)).expect_err("not JSON");
        assert!(
            err.message().starts_with("cannot serialize the output"),
            "{err}"
        );
    }
}
