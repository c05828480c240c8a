//! Helpers shared by the integration tests: the guests built by the
//! test-programs crate, and small hand-written components in WAT for the cases an
//! example cannot produce (a core module, another world, an unknown import,
//! a task returning non-JSON).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use runner::sandbox::{Sandbox, SandboxConfig};

/// A guest component (an example, or a test program), built from source
/// by the test-programs crate.
pub fn guest(name: &str) -> PathBuf {
    runner_test_programs::path(name)
}

pub fn guest_bytes(name: &str) -> Vec<u8> {
    runner_test_programs::bytes(name)
}

/// A sandbox with pools sized for tests.
pub fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        max_concurrent_runs: 64,
        ..SandboxConfig::default()
    })
    .expect("creating the sandbox")
}

/// `component` with a custom section named `tag` appended: the same
/// program under another hash (another version of a module).
pub fn with_custom_section(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(tag.len(), &mut body);
    body.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // a custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("bad WAT in a test: {e}"))
}

/// A component of the `task` world whose core `run(ptr, len) -> retptr`
/// has the given body. The core module has a bump allocator, the JSON
/// `{"ok":true}` at offset 16 (11 bytes), the text `DATA` at 32, and a return
/// area at 64: `[64] = 0` ok / `1` error, then for ok the string at 68/72,
/// for an error the case (`0` retry, `1` fail) at 68 and its string at 72/76.
pub fn task_component(run_body: &str, data: &str) -> Vec<u8> {
    task_component_with("", run_body, data)
}

/// [`task_component`] with more core functions next to `run`.
pub fn task_component_with(funcs: &str, run_body: &str, data: &str) -> Vec<u8> {
    task_component_full(1, funcs, run_body, data)
}

/// [`ok_component`] with `pages` of initial memory (64 KiB each).
pub fn task_component_with_memory(pages: u32) -> Vec<u8> {
    task_component_full(pages, "", RETURN_OK, "")
}

/// A core module's bump allocator from byte 4096 (`cabi_realloc`), as WAT.
const BUMP_REALLOC: &str = r#"(global $heap (mut i32) (i32.const 4096))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))"#;

/// The end of a core `run` returning `ok` with the 11 bytes at 16
/// (`{"ok":true}`), as WAT.
const RETURN_OK: &str = "(i32.store8 (i32.const 64) (i32.const 0))
         (i32.store (i32.const 68) (i32.const 16))
         (i32.store (i32.const 72) (i32.const 11))
         (i32.const 64)";

fn task_component_full(pages: u32, funcs: &str, run_body: &str, data: &str) -> Vec<u8> {
    wat(&task_component_text(pages, funcs, run_body, data))
}

/// `ok_component`, plus `n` instances of a core module whose memory has
/// no pages: each costs nothing to grow, but takes a memory (and an
/// instance) from the sandbox's pools.
pub fn ok_component_with_idle_memories(n: usize) -> Vec<u8> {
    let text = task_component_text(1, "", RETURN_OK, "");
    let idle = "(core module $idle (memory 0))\n".to_string()
        + &"  (core instance (instantiate $idle))\n".repeat(n);
    wat(&text.replacen(
        "(core instance $i",
        &format!("{idle}  (core instance $i"),
        1,
    ))
}

fn task_component_text(pages: u32, funcs: &str, run_body: &str, data: &str) -> String {
    format!(
        r#"
(component
  (core module $m
    (memory (export "memory") {pages})
    {BUMP_REALLOC}
    (data (i32.const 16) "{{\22ok\22:true}}")
    (data (i32.const 32) "{data}")
    {funcs}
    (func $run (export "run") (param $ptr i32) (param $len i32) (result i32)
      {run_body}))
  (core instance $i (instantiate $m))
  (type $task-error (variant (case "retry" string) (case "fail" string)))
  (export $te "task-error" (type $task-error))
  (func (export "run") (param "input" string) (result (result string (error $te)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc")))))
"#
    )
}

/// Asks `wasi:random` for `len` bytes once, then returns `{"ok":true}`
/// (its memory, 4 MiB, holds up to about 4 MiB of them).
pub fn random_bytes_component(len: u64) -> Vec<u8> {
    random_bytes_component_at(len, false)
}

/// [`random_bytes_component`], asking in its start function if `in_start`
/// (while it is instantiated), else in `run`.
pub fn random_bytes_component_at(len: u64, in_start: bool) -> Vec<u8> {
    let (start, in_run) = if in_start {
        (
            format!("(func $init (call $get (i64.const {len}) (i32.const 128))) (start $init)"),
            String::new(),
        )
    } else {
        (
            String::new(),
            format!("(call $get (i64.const {len}) (i32.const 128))"),
        )
    };
    wat(&format!(
        r#"
(component
  (import "wasi:random/random@0.2.0" (instance $random
    (export "get-random-bytes" (func (param "len" u64) (result (list u8))))))
  (core module $mem
    (memory (export "memory") 64)
    {BUMP_REALLOC})
  (core instance $m (instantiate $mem))
  (core func $get (canon lower (func $random "get-random-bytes")
    (memory (core memory $m "memory")) (realloc (core func $m "cabi_realloc"))))
  (core module $main
    (import "m" "memory" (memory 1))
    (import "r" "get" (func $get (param i64 i32)))
    (data (i32.const 16) "{{\22ok\22:true}}")
    {start}
    (func (export "run") (param i32 i32) (result i32)
      {in_run}
      {RETURN_OK}))
  (core instance $i (instantiate $main
    (with "m" (instance $m))
    (with "r" (instance (export "get" (func $get))))))
  (type $task-error (variant (case "retry" string) (case "fail" string)))
  (export $te "task-error" (type $task-error))
  (func (export "run") (param "input" string) (result (result string (error $te)))
    (canon lift (core func $i "run") (memory (core memory $m "memory"))
      (realloc (core func $m "cabi_realloc")))))
"#
    ))
}

/// Calls `wasi:cli/exit` with an error in its start function, while it is
/// instantiated.
pub fn exit_in_start_component() -> Vec<u8> {
    wat(&format!(
        r#"
(component
  (import "wasi:cli/exit@0.2.0" (instance $exit
    (export "exit" (func (param "status" (result))))))
  (core func $exit (canon lower (func $exit "exit")))
  (core module $mem
    (memory (export "memory") 1)
    {BUMP_REALLOC})
  (core instance $m (instantiate $mem))
  (core module $main
    (import "m" "memory" (memory 1))
    (import "e" "exit" (func $exit (param i32)))
    (data (i32.const 16) "{{\22ok\22:true}}")
    (func $init (call $exit (i32.const 1)))
    (start $init)
    (func (export "run") (param i32 i32) (result i32)
      {RETURN_OK}))
  (core instance $i (instantiate $main
    (with "m" (instance $m))
    (with "e" (instance (export "exit" (func $exit))))))
  (type $task-error (variant (case "retry" string) (case "fail" string)))
  (export $te "task-error" (type $task-error))
  (func (export "run") (param "input" string) (result (result string (error $te)))
    (canon lift (core func $i "run") (memory (core memory $m "memory"))
      (realloc (core func $m "cabi_realloc")))))
"#
    ))
}

/// Makes `count` `wasi:clocks` pollables and keeps them all (never drops
/// one), then returns `{"ok":true}`.
pub fn pollables_component(count: u32) -> Vec<u8> {
    wat(&format!(
        r#"
(component
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type (sub resource)))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer 1 $pollable (type $p))
    (export "subscribe-duration" (func (param "when" u64) (result (own $p))))))
  (core func $subscribe (canon lower (func $clock "subscribe-duration")))
  (core module $main
    (import "c" "subscribe" (func $subscribe (param i64) (result i32)))
    (memory (export "memory") 1)
    {BUMP_REALLOC}
    (data (i32.const 16) "{{\22ok\22:true}}")
    (func (export "run") (param i32 i32) (result i32)
      (local $n i32)
      (local.set $n (i32.const {count}))
      (block $done
        (loop $more
          (br_if $done (i32.eqz (local.get $n)))
          (drop (call $subscribe (i64.const 1000000000)))
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br $more)))
      {RETURN_OK}))
  (core instance $i (instantiate $main
    (with "c" (instance (export "subscribe" (func $subscribe))))))
  (type $task-error (variant (case "retry" string) (case "fail" string)))
  (export $te "task-error" (type $task-error))
  (func (export "run") (param "input" string) (result (result string (error $te)))
    (canon lift (core func $i "run") (memory (core memory $i "memory"))
      (realloc (core func $i "cabi_realloc")))))
"#
    ))
}

/// Returns `{"ok":true}`.
pub fn ok_component() -> Vec<u8> {
    task_component(RETURN_OK, "")
}

/// Returns its input unchanged (so non-JSON input gives non-JSON output).
pub fn echo_component() -> Vec<u8> {
    task_component(
        "(i32.store8 (i32.const 64) (i32.const 0))
         (i32.store (i32.const 68) (local.get $ptr))
         (i32.store (i32.const 72) (local.get $len))
         (i32.const 64)",
        "",
    )
}

/// Returns the text `text` as its output (to test non-JSON output).
pub fn constant_output_component(text: &str) -> Vec<u8> {
    task_component(
        &format!(
            "(i32.store8 (i32.const 64) (i32.const 0))
             (i32.store (i32.const 68) (i32.const 32))
             (i32.store (i32.const 72) (i32.const {}))
             (i32.const 64)",
            text.len()
        ),
        text,
    )
}

/// Returns `task-error::retry(message)` or `task-error::fail(message)`.
pub fn task_error_component(retry: bool, message: &str) -> Vec<u8> {
    task_component(
        &format!(
            "(i32.store8 (i32.const 64) (i32.const 1))
             (i32.store8 (i32.const 68) (i32.const {case}))
             (i32.store (i32.const 72) (i32.const 32))
             (i32.store (i32.const 76) (i32.const {len}))
             (i32.const 64)",
            case = if retry { 0 } else { 1 },
            len = message.len()
        ),
        message,
    )
}

/// Loops forever without calling the host.
pub fn spin_component() -> Vec<u8> {
    task_component("(loop $forever (br $forever)) (unreachable)", "")
}

/// Grows its memory one MiB at a time until refused, then traps.
pub fn memory_grow_component() -> Vec<u8> {
    task_component(
        "(loop $grow
           (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
         (unreachable)",
        "",
    )
}

/// Executes `unreachable` inside a named function, for the backtrace.
pub fn unreachable_component() -> Vec<u8> {
    task_component_with(
        "(func $explode (unreachable))",
        "(call $explode) (unreachable)",
        "",
    )
}

/// A core module: the most common wrong upload.
pub fn core_module() -> Vec<u8> {
    wat(r#"(module (func (export "run")))"#)
}

/// A component of another world: it exports `hello`, not `run`.
pub fn other_world_component() -> Vec<u8> {
    wat(r#"
(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func (export "hello") (canon lift (core func $i "f"))))
"#)
}

/// Exports `run` with the wrong signature.
pub fn wrong_run_type_component() -> Vec<u8> {
    wat(r#"
(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func (export "run") (canon lift (core func $i "f"))))
"#)
}

/// A valid task that also imports an interface this runner does not have.
pub fn unknown_import_component() -> Vec<u8> {
    wat(r#"
(component
  (import "example:net/raw-socket@1.0.0" (instance
    (export "open" (func))))
  (core module $m
    (memory (export "memory") 1)
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
    (func (export "run") (param i32 i32) (result i32) (unreachable)))
  (core instance $i (instantiate $m))
  (type $task-error (variant (case "retry" string) (case "fail" string)))
  (export $te "task-error" (type $task-error))
  (func (export "run") (param "input" string) (result (result string (error $te)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc")))))
"#)
}

/// An HTTP client for talking to the API in tests. reqwest takes rustls's
/// process-wide crypto provider, which the binary installs at start-up.
pub fn http_client() -> reqwest::Client {
    runner_host_fns::install_crypto_provider();
    reqwest::Client::new()
}

/// [`http_client`], blocking, for tests that drive a `runner` process.
pub fn blocking_http_client() -> reqwest::blocking::Client {
    runner_host_fns::install_crypto_provider();
    reqwest::blocking::Client::new()
}

/// Every file below `dir`, in its subdirectories too (not the directories
/// themselves). A directory that cannot be read fails the test.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// [`files_in`] `dir` whose extension is `ext`.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = files_in(dir);
    out.retain(|p| p.extension().is_some_and(|x| x == ext));
    out
}

/// The stdout of a process that must have succeeded; otherwise the test
/// fails showing its exit code, stdout and stderr.
#[track_caller]
pub fn ok_stdout(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Jobs not yet final in all of `broker`'s queues: ready, delayed and in
/// flight (0 after input that must enqueue nothing).
pub async fn jobs_not_final(broker: &dyn runner::queue::Broker) -> u64 {
    broker
        .queues()
        .await
        .unwrap()
        .iter()
        .map(|q| q.ready + q.delayed + q.in_flight)
        .sum()
}
