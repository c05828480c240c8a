//! Every service call is traced with its capability, operation, outcome
//! and duration.

use std::io::Write;
use std::sync::{Arc, Mutex};

use runner_host_fns::kv::{KvQuota, KvService};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn host_calls_are_traced_with_outcome_and_duration() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let kv = KvService::in_memory();
    kv.set("reminder", &KvQuota::default(), "k", b"v", None)
        .await
        .expect("set");
    kv.get("", "k").await.expect_err("no task name");

    let out = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8");
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
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let huge = "X".repeat(1 << 20);
    let e = traced("http", "send", async {
        Err::<(), _>(HostError::invalid(format!("unsupported method '{huge}'")))
    })
    .await
    .unwrap_err();
    // The task still gets its error whole (the sandbox caps what it sees).
    assert!(e.message().len() > 1 << 20);

    let out = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8");
    let line = out
        .lines()
        .find(|l| l.contains("host call failed"))
        .unwrap_or_else(|| panic!("no line for the failed call:\n{out}"));
    assert!(line.len() < LOGGED_ERROR_MAX + 512, "{} bytes", line.len());
    assert!(line.contains("invalid: unsupported method 'XXX"), "{line}");
    assert!(line.contains("more bytes]"), "{line}");
}
