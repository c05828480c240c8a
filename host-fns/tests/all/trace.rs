//! Every service call is traced with its capability, operation, outcome
//! and duration.

use runner_host_fns::kv::{KvQuota, KvService};

#[tokio::test]
async fn host_calls_are_traced_with_outcome_and_duration() {
    let (captured, _guard) = runner_test_support::capture_logs(tracing::Level::DEBUG);

    let kv = KvService::in_memory();
    kv.set("reminder", &KvQuota::default(), "k", b"v", None)
        .await
        .expect("set");
    kv.get("", "k").await.expect_err("no task name");

    let out = captured.text();
    let lines: Vec<&str> = out.lines().collect();
    let set = lines
        .iter()
        .find(|l| l.contains("host_call{") && l.contains(r#"op="set""#))
        .unwrap_or_else(|| panic!("no span for the set call:\n{out}"));
    assert!(set.contains(r#"capability="kv""#), "{set}");
    assert!(set.contains(r#"outcome="ok""#), "{set}");
    assert!(set.contains("duration_ms="), "{set}");
    let get = lines
        .iter()
        .find(|l| l.contains("host call failed") && l.contains(r#"op="get""#))
        .unwrap_or_else(|| panic!("no line for the failed call:\n{out}"));
    assert!(get.contains(r#"capability="kv""#), "{get}");
    assert!(get.contains(r#"outcome="denied""#), "{get}");
    assert!(get.contains("duration_ms="), "{get}");
}

/// A failed call's line quotes at most `LOGGED_ERROR_MAX` bytes of its
/// message: a task that sends a huge method (quoted back in the error) gets
/// one short line per call, not a line as long as what it sent.
#[tokio::test]
async fn a_failed_calls_line_is_capped() {
    use runner_host_fns::HostError;
    use runner_host_fns::trace::{LOGGED_ERROR_MAX, traced};
    let (captured, _guard) = runner_test_support::capture_logs(tracing::Level::INFO);

    let huge = "X".repeat(1 << 20);
    let e = traced("http", "send", async {
        Err::<(), _>(HostError::invalid(format!("unsupported method '{huge}'")))
    })
    .await
    .unwrap_err();
    // The task still gets its error whole (the sandbox caps what it sees).
    assert!(e.message().len() > 1 << 20);

    let out = captured.text();
    let line = out
        .lines()
        .find(|l| l.contains("host call failed"))
        .unwrap_or_else(|| panic!("no line for the failed call:\n{out}"));
    assert!(line.len() < LOGGED_ERROR_MAX + 512, "{} bytes", line.len());
    assert!(line.contains("invalid: unsupported method 'XXX"), "{line}");
    assert!(line.contains("more bytes]"), "{line}");
}
