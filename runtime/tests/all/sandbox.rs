//! The sandbox against real components: every outcome, limits that do not
//! leak into the next run, bad modules, the compiled-module disk cache.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner::sandbox::{
    CancelToken, HostEnv, JobInfo, LoadError, LoadedModule, MAX_RANDOM_BYTES, MAX_RESOURCES,
    ModuleOrigin, Outcome, Progress, RunLimits, RunReport, RunRequest, Sandbox, SandboxConfig,
};

use crate::support::{self, guest_bytes, sandbox};

fn limits(fuel: Option<u64>, memory_mib: u64, timeout: Duration) -> RunLimits {
    RunLimits {
        fuel,
        memory_bytes: memory_mib << 20,
        timeout,
        ..RunLimits::default()
    }
}

async fn run_with(
    sandbox: &Sandbox,
    module: &LoadedModule,
    input: &str,
    limits: RunLimits,
) -> RunReport {
    let request = RunRequest {
        limits,
        ..RunRequest::new(input)
    };
    sandbox.run(module, request).await
}

fn assert_kind(report: &RunReport, kind: &str) {
    assert_eq!(
        report.outcome.kind(),
        kind,
        "unexpected outcome {:?}\nstderr: {}",
        report.outcome,
        report.stderr
    );
}

// ---- WAT components: every outcome, independent of the examples ----

#[tokio::test]
async fn a_task_returning_json_succeeds() {
    let sandbox = sandbox();
    let module = sandbox.load(&support::ok_component()).unwrap();
    let report = sandbox.run(&module, RunRequest::new("{}")).await;
    assert_eq!(report.outcome, Outcome::Success(r#"{"ok":true}"#.into()));
    assert!(report.fuel_used.is_some_and(|fuel| fuel > 0));
}

#[tokio::test]
async fn task_errors_are_retry_and_fail() {
    let sandbox = sandbox();
    let retry = sandbox
        .load(&support::task_error_component(true, "smtp busy"))
        .unwrap();
    let fail = sandbox
        .load(&support::task_error_component(false, "no such user"))
        .unwrap();
    let report = sandbox.run(&retry, RunRequest::new("{}")).await;
    assert_eq!(report.outcome, Outcome::Retry("smtp busy".into()));
    let report = sandbox.run(&fail, RunRequest::new("{}")).await;
    assert_eq!(report.outcome, Outcome::Fail("no such user".into()));
}

/// A task's failure message is capped before it reaches a log, a record or
/// a dead letter (kept 7 days): before, 50,000 bytes went everywhere.
#[tokio::test]
async fn a_tasks_long_failure_message_is_capped() {
    let sandbox = sandbox();
    // The component writes its result over bytes 32..48 of the message:
    // a length of 0x7f7f keeps them valid UTF-8.
    let long = "x".repeat(0x7f7f);
    let fail = sandbox
        .load(&support::task_error_component(false, &long))
        .unwrap();
    let report = sandbox.run(&fail, RunRequest::new("{}")).await;
    let Outcome::Fail(message) = report.outcome else {
        panic!("{:?}", report.outcome);
    };
    assert!(
        message.len() <= runner::queue::job::MAX_MESSAGE_BYTES,
        "{}",
        message.len()
    );
    assert!(
        message.ends_with("more bytes]"),
        "{}",
        &message[message.len() - 40..]
    );
}

#[tokio::test]
async fn output_that_is_not_json_or_too_large_is_invalid() {
    let sandbox = sandbox();
    let module = sandbox
        .load(&support::constant_output_component("hello there"))
        .unwrap();
    let report = sandbox.run(&module, RunRequest::new("{}")).await;
    let Outcome::InvalidOutput(why) = &report.outcome else {
        panic!("expected invalid output, got {:?}", report.outcome);
    };
    assert!(why.contains("not JSON"), "{why}");

    let echo = sandbox.load(&support::echo_component()).unwrap();
    let big = format!("[{}1]", "1,".repeat(1000));
    let mut request = RunRequest::new(big);
    request.limits.result_cap_bytes = 100;
    let report = sandbox.run(&echo, request).await;
    let Outcome::InvalidOutput(why) = &report.outcome else {
        panic!("expected invalid output, got {:?}", report.outcome);
    };
    assert!(why.contains("above the cap of 100 bytes"), "{why}");
}

#[tokio::test]
async fn an_endless_loop_exhausts_its_fuel_within_the_budget() {
    let sandbox = sandbox();
    let module = sandbox.load(&support::spin_component()).unwrap();
    let budget = 5_000_000;
    let report = run_with(
        &sandbox,
        &module,
        "{}",
        limits(Some(budget), 16, Duration::from_secs(60)),
    )
    .await;
    assert_eq!(report.outcome, Outcome::FuelExhausted);
    let used = report.fuel_used.unwrap();
    assert!(used <= budget, "used {used} of {budget}");
}

#[tokio::test]
async fn an_endless_loop_without_fuel_budget_hits_the_time_limit() {
    let sandbox = sandbox();
    let module = sandbox.load(&support::spin_component()).unwrap();
    let report = run_with(
        &sandbox,
        &module,
        "{}",
        limits(None, 16, Duration::from_millis(200)),
    )
    .await;
    assert_eq!(report.outcome, Outcome::TimeLimit);
}

#[tokio::test]
async fn growing_memory_past_the_limit_is_a_memory_limit_not_a_trap() {
    let sandbox = sandbox();
    let module = sandbox.load(&support::memory_grow_component()).unwrap();
    let report = run_with(
        &sandbox,
        &module,
        "{}",
        limits(None, 8, Duration::from_secs(30)),
    )
    .await;
    assert_eq!(report.outcome, Outcome::MemoryLimit);
}

#[tokio::test]
async fn a_trap_carries_the_wasm_backtrace() {
    let sandbox = sandbox();
    let module = sandbox.load(&support::unreachable_component()).unwrap();
    let report = sandbox.run(&module, RunRequest::new("{}")).await;
    let Outcome::Trap { message, backtrace } = &report.outcome else {
        panic!("expected a trap, got {:?}", report.outcome);
    };
    assert!(message.contains("unreachable"), "{message}");
    let backtrace = backtrace.as_deref().expect("a wasm backtrace");
    assert!(backtrace.contains("explode"), "{backtrace}");
}

#[tokio::test]
async fn cancelling_stops_a_running_guest_as_revoked() {
    let sandbox = sandbox();
    let module = sandbox.load(&support::spin_component()).unwrap();
    let cancel = CancelToken::new();
    let request = RunRequest {
        limits: limits(None, 16, Duration::from_secs(60)),
        cancel: cancel.clone(),
        ..RunRequest::new("{}")
    };
    let run = tokio::spawn({
        let sandbox = sandbox.clone();
        async move { sandbox.run(&module, request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!run.is_finished(), "the spinning guest ended on its own");
    cancel.cancel();
    let report = run.await.unwrap();
    assert_eq!(report.outcome, Outcome::Revoked);
}

#[tokio::test]
async fn a_memory_minimum_above_the_limit_is_a_memory_limit_at_instantiation() {
    let sandbox = sandbox();
    // 200 pages (12.5 MiB) of initial memory against a 4 MiB limit.
    let module = sandbox
        .load(&support::task_component_with_memory(200))
        .unwrap();
    let report = run_with(
        &sandbox,
        &module,
        "{}",
        limits(None, 4, Duration::from_secs(30)),
    )
    .await;
    assert_eq!(report.outcome, Outcome::MemoryLimit);
    let report = run_with(
        &sandbox,
        &module,
        "{}",
        limits(None, 16, Duration::from_secs(30)),
    )
    .await;
    assert_kind(&report, "success");
    // The peak (runner_job_memory_bytes) counts the initial memory too.
    assert!(
        (200 << 16..=16 << 20).contains(&report.memory_peak_bytes),
        "peak {} bytes",
        report.memory_peak_bytes
    );
}

/// Every outcome, several times, interleaved, in one process and one
/// sandbox: none of them may leave anything behind for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_of_every_outcome_leave_the_sandbox_healthy() {
    let sandbox = sandbox();
    let ok = sandbox.load(&support::ok_component()).unwrap();
    let retry = sandbox
        .load(&support::task_error_component(true, "later"))
        .unwrap();
    let fail = sandbox
        .load(&support::task_error_component(false, "never"))
        .unwrap();
    let spin = sandbox.load(&support::spin_component()).unwrap();
    let grow = sandbox.load(&support::memory_grow_component()).unwrap();
    let trap = sandbox.load(&support::unreachable_component()).unwrap();
    let echo = sandbox.load(&support::echo_component()).unwrap();
    let fuel = limits(Some(2_000_000), 16, Duration::from_secs(60));
    let short = limits(None, 16, Duration::from_millis(50));
    let small = limits(None, 4, Duration::from_secs(30));

    for _round in 0..5 {
        let cases: [(&LoadedModule, &str, RunLimits, &str); 8] = [
            (&ok, "{}", RunLimits::default(), "success"),
            (&retry, "{}", RunLimits::default(), "retry"),
            (&fail, "{}", RunLimits::default(), "fail"),
            (&spin, "{}", fuel.clone(), "fuel_exhausted"),
            (&spin, "{}", short.clone(), "time_limit"),
            (&grow, "{}", small.clone(), "memory_limit"),
            (&trap, "{}", RunLimits::default(), "trap"),
            (&echo, "not json", RunLimits::default(), "invalid_output"),
        ];
        for (module, input, limits, kind) in cases {
            let report = run_with(&sandbox, module, input, limits).await;
            assert_kind(&report, kind);
        }
    }
    let report = sandbox.run(&ok, RunRequest::new("{}")).await;
    assert_kind(&report, "success");
}

/// One executor thread: if a CPU-bound guest did not yield, the short run
/// could not even start until the spinners were stopped.
#[tokio::test(flavor = "current_thread")]
async fn cpu_bound_guests_do_not_stall_other_runs_on_the_same_executor() {
    let sandbox = sandbox();
    let spin = sandbox.load(&support::spin_component()).unwrap();
    let ok = sandbox.load(&support::ok_component()).unwrap();
    let cancel = CancelToken::new();
    let spinners: Vec<_> = (0..3)
        .map(|_| {
            let sandbox = sandbox.clone();
            let spin = Arc::clone(&spin);
            let request = RunRequest {
                limits: limits(None, 16, Duration::from_secs(120)),
                cancel: cancel.clone(),
                ..RunRequest::new("{}")
            };
            tokio::spawn(async move { sandbox.run(&spin, request).await })
        })
        .collect();
    // Let the spinners get going first.
    tokio::time::sleep(Duration::from_millis(50)).await;

    for _ in 0..3 {
        let report = sandbox.run(&ok, RunRequest::new("{}")).await;
        assert_kind(&report, "success");
    }
    assert!(
        spinners.iter().all(|s| !s.is_finished()),
        "the short runs finished only after the spinners"
    );
    cancel.cancel();
    for spinner in spinners {
        assert_eq!(spinner.await.unwrap().outcome, Outcome::Revoked);
    }
}

// ---- Bad modules ----

#[test]
fn bad_modules_are_refused_with_what_is_wrong() {
    let sandbox = sandbox();
    assert_eq!(
        sandbox.load(b"hello, world").unwrap_err(),
        LoadError::NotWasm
    );
    assert_eq!(sandbox.load(b"").unwrap_err(), LoadError::NotWasm);
    assert_eq!(
        sandbox.load(&support::core_module()).unwrap_err(),
        LoadError::CoreModule
    );

    let err = sandbox.load(&support::other_world_component()).unwrap_err();
    let LoadError::WrongWorld { missing } = &err else {
        panic!("expected a wrong world, got {err:?}");
    };
    assert!(missing.contains("missing the export `run"), "{missing}");
    assert!(missing.contains("`hello`"), "{missing}");

    let err = sandbox
        .load(&support::wrong_run_type_component())
        .unwrap_err();
    let LoadError::WrongWorld { missing } = &err else {
        panic!("expected a wrong world, got {err:?}");
    };
    assert!(missing.contains("wrong type"), "{missing}");

    assert_eq!(
        sandbox
            .load(&support::unknown_import_component())
            .unwrap_err(),
        LoadError::UnknownImport {
            name: "example:net/raw-socket@1.0.0".into()
        }
    );

    // The right header, then garbage.
    let mut truncated = support::ok_component();
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        sandbox.load(&truncated).unwrap_err(),
        LoadError::Invalid(_)
    ));
}

/// A run cancelled while it waits for a slot (every slot busy) ends
/// revoked at once, without starting. It used to wait for the slot, then
/// run (a job revoked with `terminate` could still succeed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_waiting_for_a_slot_ends_it_unstarted() {
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_runs: 1,
        ..SandboxConfig::default()
    })
    .unwrap();
    let spin = sandbox.load(&support::spin_component()).unwrap();
    let ok = sandbox.load(&support::ok_component()).unwrap();
    let stop_spinner = CancelToken::new();
    let spinner = tokio::spawn({
        let sandbox = sandbox.clone();
        let request = RunRequest {
            limits: limits(None, 16, Duration::from_secs(60)),
            cancel: stop_spinner.clone(),
            ..RunRequest::new("{}")
        };
        async move { sandbox.run(&spin, request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancel = CancelToken::new();
    let waiting = tokio::spawn({
        let sandbox = sandbox.clone();
        let request = RunRequest {
            cancel: cancel.clone(),
            ..RunRequest::new("{}")
        };
        async move { sandbox.run(&ok, request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "ran without a slot");
    cancel.cancel();
    let report = waiting.await.unwrap();
    assert_eq!(report.outcome, Outcome::Revoked);
    assert!(!spinner.is_finished(), "the slot was free");
    stop_spinner.cancel();
    assert_eq!(spinner.await.unwrap().outcome, Outcome::Revoked);
}

/// A component needing more of the pools than one run's share (here,
/// memories) is refused when loaded. It used to load, and each of its runs
/// took the pool slots of others, whose runs then failed to instantiate.
#[tokio::test]
async fn a_component_needing_more_than_a_runs_share_of_the_pools_is_refused() {
    let sandbox = sandbox();
    // One memory of its own and one idle one: within a run's share.
    let within = sandbox
        .load(&support::ok_component_with_idle_memories(1))
        .unwrap();
    assert_kind(
        &run_with(
            &sandbox,
            &within,
            "{}",
            limits(None, 16, Duration::from_secs(5)),
        )
        .await,
        "success",
    );
    // The test sandbox holds 64 runs, two memories and 16 instances each:
    // this one would take them all.
    let err = sandbox
        .load(&support::ok_component_with_idle_memories(200))
        .unwrap_err();
    let LoadError::Invalid(why) = &err else {
        panic!("expected an invalid module, got {err:?}");
    };
    assert!(why.contains("exceeds the configured maximum"), "{why}");
}

/// What WASI makes on the host for a guest is bounded: the bytes of one
/// `wasi:random` call, and the resources a run holds. Each used to be far
/// larger (64 MiB a call, a million resources), outside the run's limits.
#[tokio::test]
async fn wasi_random_bytes_and_resources_are_bounded() {
    let sandbox = sandbox();
    let run = |bytes: Vec<u8>| {
        let sandbox = &sandbox;
        async move {
            let module = sandbox.load(&bytes).unwrap();
            run_with(
                sandbox,
                &module,
                "{}",
                limits(None, 16, Duration::from_secs(20)),
            )
            .await
        }
    };
    assert_kind(
        &run(support::random_bytes_component(MAX_RANDOM_BYTES)).await,
        "success",
    );
    let report = run(support::random_bytes_component(MAX_RANDOM_BYTES + 1)).await;
    assert_kind(&report, "trap");
    assert!(
        report.outcome.to_string().contains("exceeds limit"),
        "{}",
        report.outcome
    );

    // Asked for while the guest is instantiated, the error is the guest's
    // too, not the host's (which would be retried as "infrastructure").
    let report = run(support::random_bytes_component_at(
        MAX_RANDOM_BYTES + 1,
        true,
    ))
    .await;
    assert_kind(&report, "trap");
    assert!(
        report.outcome.to_string().contains("exceeds limit"),
        "{}",
        report.outcome
    );
    let report = run(support::exit_in_start_component()).await;
    assert_kind(&report, "trap");
    assert!(
        report.outcome.to_string().contains("called exit(1)"),
        "{}",
        report.outcome
    );

    assert_kind(&run(support::pollables_component(1_000)).await, "success");
    let report = run(support::pollables_component(MAX_RESOURCES as u32 + 1)).await;
    assert_kind(&report, "trap");
}

// ---- Loading and the disk cache ----

/// A process keeps the modules it used last: past `loaded_modules_max`,
/// the one used longest ago is let go of and compiled again when needed,
/// unless something still holds it, which is then found, not loaded twice.
#[tokio::test]
async fn a_process_keeps_only_the_modules_it_used_last() {
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_runs: 4,
        loaded_modules_max: 2,
        ..SandboxConfig::default()
    })
    .unwrap();
    let hello = guest_bytes("hello");
    let v: Vec<Vec<u8>> = (0..4)
        .map(|i| support::with_custom_section(&hello, &format!("version-{i}")))
        .collect();
    let hash = |i: usize| runner::sandbox::ModuleHash::of(&v[i]);
    for bytes in &v[..3] {
        sandbox.load(bytes).unwrap();
    }
    assert_eq!(sandbox.compilations(), 3);
    assert_eq!(sandbox.modules_held(), 2);
    assert!(sandbox.get(&hash(0)).is_none(), "the oldest is let go of");
    assert!(sandbox.get(&hash(2)).is_some());
    // Used now, version 1 is newer than version 2.
    assert!(sandbox.get(&hash(1)).is_some());
    sandbox.load(&v[0]).unwrap();
    assert_eq!(sandbox.compilations(), 4, "version 0 compiled again");
    assert!(sandbox.get(&hash(2)).is_none(), "version 2 was the oldest");
    assert!(sandbox.get(&hash(1)).is_some());

    // A module someone holds outlives its place among the kept ones.
    let held = sandbox.load(&v[3]).unwrap();
    assert_eq!(sandbox.compilations(), 5);
    // Two others used since: version 3 is let go of (held here only).
    sandbox.load(&v[0]).unwrap();
    sandbox.load(&v[1]).unwrap();
    assert_eq!(sandbox.modules_held(), 2);
    let compiled = sandbox.compilations();
    let again = sandbox.load(&v[3]).unwrap();
    assert!(Arc::ptr_eq(&held, &again), "found, not loaded again");
    assert_eq!(sandbox.compilations(), compiled);
    assert_eq!(sandbox.modules_held(), 2);
    // Kept again, version 3 pushed out 0 (the oldest), which 0 and 1 now
    // push out in turn, compiled again; let go of by all, 3 is gone.
    sandbox.load(&v[0]).unwrap();
    sandbox.load(&v[1]).unwrap();
    assert_eq!(sandbox.compilations(), compiled + 2);
    drop((held, again));
    assert!(sandbox.get(&hash(3)).is_none());
    // Another version of a module is still that module.
    let module = sandbox.load(&v[2]).unwrap();
    let report = sandbox
        .run(&module, RunRequest::new(r#"{"name":"Ada"}"#))
        .await;
    assert_kind(&report, "success");
}

#[test]
fn a_module_is_compiled_once_per_process() {
    let sandbox = sandbox();
    let bytes = support::ok_component();
    let first = sandbox.load(&bytes).unwrap();
    let second = sandbox.load(&bytes).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(sandbox.compilations(), 1);
    assert_eq!(first.hash, runner::sandbox::ModuleHash::of(&bytes));
    assert_eq!(sandbox.get(&first.hash).map(|m| m.hash), Some(first.hash));
}

/// A sandbox's configuration that caches compiled modules in `dir`.
fn cached_in(dir: &std::path::Path) -> SandboxConfig {
    SandboxConfig {
        cache_dir: Some(dir.to_path_buf()),
        max_concurrent_runs: 8,
        ..SandboxConfig::default()
    }
}

#[tokio::test]
async fn a_second_sandbox_loads_the_compiled_module_from_disk() {
    let cache = tempfile::tempdir().unwrap();
    let config = cached_in(cache.path());
    let bytes = support::ok_component();

    let first = Sandbox::new(config.clone()).unwrap();
    let module = first.load(&bytes).unwrap();
    assert_eq!(module.origin, ModuleOrigin::Compiled);
    assert_eq!(first.compilations(), 1);
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].starts_with(&module.hash.to_hex()), "{cached:?}");

    let second = Sandbox::new(config).unwrap();
    let module = second.load(&bytes).unwrap();
    assert_eq!(module.origin, ModuleOrigin::DiskCache);
    assert_eq!(second.compilations(), 0);
    let report = second.run(&module, RunRequest::new("{}")).await;
    assert_kind(&report, "success");
}

/// A compiled module is cached even when another writer's unfinished
/// file has the name this process would once have used
/// (`<hash>.<engine>.tmp<pid>`: processes of one PID in containers that
/// share the cache, or two threads of one process). Before, both wrote
/// the same file: the write failed here (a directory stands in for the
/// other writer's file), and a file truncated by one writer while the
/// other renamed it could be read as the compiled module.
#[test]
fn a_cache_write_uses_a_file_of_its_own() {
    let cache = tempfile::tempdir().unwrap();
    let config = cached_in(cache.path());
    let bytes = support::ok_component();
    Sandbox::new(config.clone()).unwrap().load(&bytes).unwrap();
    let cached = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(&cached).unwrap();
    let theirs = cached.with_extension(format!("tmp{}", std::process::id()));
    std::fs::create_dir(&theirs).unwrap();

    let second = Sandbox::new(config.clone()).unwrap();
    assert_eq!(second.load(&bytes).unwrap().origin, ModuleOrigin::Compiled);
    let third = Sandbox::new(config).unwrap();
    assert_eq!(third.load(&bytes).unwrap().origin, ModuleOrigin::DiskCache);
    assert!(theirs.is_dir());
    // Nothing of this writer's is left but the compiled module.
    let mut names: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert_eq!(names, vec![cached, theirs]);
}

#[test]
fn a_corrupt_cache_file_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let config = cached_in(cache.path());
    let bytes = support::ok_component();
    let first = Sandbox::new(config.clone()).unwrap();
    first.load(&bytes).unwrap();
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not a compiled module").unwrap();
    }
    let second = Sandbox::new(config).unwrap();
    let module = second.load(&bytes).unwrap();
    assert_eq!(module.origin, ModuleOrigin::Compiled);
    assert_eq!(second.compilations(), 1);
}

// ---- The example guests ----

#[tokio::test]
async fn hello_greets_from_its_input_with_logs_and_progress() {
    let sandbox = sandbox();
    let module = sandbox.load(&guest_bytes("hello")).unwrap();
    assert!(
        module
            .imports
            .iter()
            .any(|i| i == "runner:task/context@0.1.0"),
        "{:?}",
        module.imports
    );
    assert!(
        module.capabilities().is_empty(),
        "{:?}",
        module.capabilities()
    );

    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let request = RunRequest {
        host: HostEnv {
            progress: Some(Arc::new(move |p: &Progress| {
                sink.lock().unwrap().push(p.clone());
            })),
            ..HostEnv::default()
        },
        ..RunRequest::new(r#"{"name":"Ada"}"#)
    };
    let report = sandbox.run(&module, request).await;
    let Outcome::Success(output) = &report.outcome else {
        panic!(
            "hello failed: {:?}\nstderr: {}",
            report.outcome, report.stderr
        );
    };
    let output: serde_json::Value = serde_json::from_str(output).unwrap();
    assert!(output.to_string().contains("Ada"), "{output}");
    assert!(!report.logs.is_empty(), "hello logs a line");
    assert!(!seen.lock().unwrap().is_empty(), "hello reports progress");
    assert_eq!(report.last_progress.as_ref(), seen.lock().unwrap().last());
}

#[tokio::test]
async fn the_fuel_burner_stops_within_its_budget() {
    let sandbox = sandbox();
    let module = sandbox.load(&guest_bytes("fuel_burner")).unwrap();
    let budget = 50_000_000;
    let report = run_with(
        &sandbox,
        &module,
        "{}",
        limits(Some(budget), 64, Duration::from_secs(60)),
    )
    .await;
    assert_eq!(report.outcome, Outcome::FuelExhausted);
    assert!(report.fuel_used.unwrap() <= budget);
}

#[tokio::test]
async fn the_memory_hog_stops_at_the_memory_limit() {
    let sandbox = sandbox();
    let module = sandbox.load(&guest_bytes("memory_hog")).unwrap();
    let report = run_with(
        &sandbox,
        &module,
        "{}",
        limits(None, 32, Duration::from_secs(60)),
    )
    .await;
    assert_eq!(
        report.outcome,
        Outcome::MemoryLimit,
        "stderr: {}",
        report.stderr
    );
    // It got close to its limit and no further.
    assert!(
        (16 << 20..=32 << 20).contains(&report.memory_peak_bytes),
        "peak {} bytes",
        report.memory_peak_bytes
    );
}

#[tokio::test]
async fn the_panicker_traps_with_its_panic_message_and_a_backtrace() {
    let sandbox = sandbox();
    let module = sandbox.load(&guest_bytes("panicker")).unwrap();
    let report = sandbox.run(&module, RunRequest::new("{}")).await;
    let Outcome::Trap { message, backtrace } = &report.outcome else {
        panic!("expected a trap, got {:?}", report.outcome);
    };
    assert!(message.starts_with("panicked at"), "{message}");
    assert!(
        message.contains("panicker: deliberate panic: the sky is falling"),
        "{message}"
    );
    assert!(report.stderr.contains("panicked at"), "{}", report.stderr);
    assert!(backtrace.is_some(), "no wasm backtrace");
}

#[tokio::test]
async fn the_sleeper_stops_at_the_time_limit() {
    let sandbox = sandbox();
    let module = sandbox.load(&guest_bytes("sleeper")).unwrap();
    let input = r#"{"ms":60000}"#;
    let report = run_with(
        &sandbox,
        &module,
        input,
        limits(None, 64, Duration::from_millis(300)),
    )
    .await;
    assert_eq!(report.outcome, Outcome::TimeLimit);
}

#[tokio::test]
async fn flaky_asks_for_a_retry_on_its_first_attempt_and_sees_the_attempt_number() {
    let sandbox = sandbox();
    let module = sandbox.load(&guest_bytes("flaky")).unwrap();
    let first = sandbox.run(&module, RunRequest::new("{}")).await;
    assert_kind(&first, "retry");

    let late = RunRequest {
        job: JobInfo {
            attempt: 10,
            max_retries: 10,
            ..JobInfo::default()
        },
        ..RunRequest::new("{}")
    };
    let report = sandbox.run(&module, late).await;
    assert_kind(&report, "success");
}

/// Revoking a guest that waits in a host call (a WASI sleep) stops it at
/// once, without waiting for an epoch check inside wasm.
#[tokio::test]
async fn revoking_a_sleeping_guest_stops_it() {
    let sandbox = sandbox();
    let module = sandbox.load(&guest_bytes("sleeper")).unwrap();
    let cancel = CancelToken::new();
    let request = RunRequest {
        limits: limits(None, 64, Duration::from_secs(60)),
        cancel: cancel.clone(),
        ..RunRequest::new(r#"{"ms":60000}"#)
    };
    let run = tokio::spawn({
        let sandbox = sandbox.clone();
        async move { sandbox.run(&module, request).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!run.is_finished());
    cancel.cancel();
    assert_eq!(run.await.unwrap().outcome, Outcome::Revoked);
}

/// The examples in one process: each outcome, then hello still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_outcome_in_one_process_then_hello_still_works() {
    let sandbox = sandbox();
    let hello = sandbox.load(&guest_bytes("hello")).unwrap();
    let burner = sandbox.load(&guest_bytes("fuel_burner")).unwrap();
    let hog = sandbox.load(&guest_bytes("memory_hog")).unwrap();
    let panicker = sandbox.load(&guest_bytes("panicker")).unwrap();
    let sleeper = sandbox.load(&guest_bytes("sleeper")).unwrap();
    let flaky = sandbox.load(&guest_bytes("flaky")).unwrap();
    for _round in 0..3 {
        let cases: [(&LoadedModule, &str, RunLimits, &str); 6] = [
            (&hello, r#"{"name":"Ada"}"#, RunLimits::default(), "success"),
            (
                &burner,
                "{}",
                limits(Some(20_000_000), 64, Duration::from_secs(60)),
                "fuel_exhausted",
            ),
            (
                &hog,
                "{}",
                limits(None, 32, Duration::from_secs(60)),
                "memory_limit",
            ),
            (&panicker, "{}", RunLimits::default(), "trap"),
            (
                &sleeper,
                r#"{"ms":60000}"#,
                limits(None, 64, Duration::from_millis(100)),
                "time_limit",
            ),
            (&flaky, "{}", RunLimits::default(), "retry"),
        ];
        for (module, input, limits, kind) in cases {
            let report = run_with(&sandbox, module, input, limits).await;
            assert_kind(&report, kind);
        }
    }
    let report = sandbox
        .run(&hello, RunRequest::new(r#"{"name":"Ada"}"#))
        .await;
    assert_kind(&report, "success");
}

/// A real Rust guest burning CPU next to hello on one executor thread.
#[tokio::test(flavor = "current_thread")]
async fn the_fuel_burner_does_not_stall_hello() {
    let sandbox = sandbox();
    let burner = sandbox.load(&guest_bytes("fuel_burner")).unwrap();
    let hello = sandbox.load(&guest_bytes("hello")).unwrap();
    let cancel = CancelToken::new();
    let burning = tokio::spawn({
        let sandbox = sandbox.clone();
        let request = RunRequest {
            limits: limits(None, 64, Duration::from_secs(120)),
            cancel: cancel.clone(),
            ..RunRequest::new("{}")
        };
        async move { sandbox.run(&burner, request).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let report = sandbox
        .run(&hello, RunRequest::new(r#"{"name":"Ada"}"#))
        .await;
    assert_kind(&report, "success");
    assert!(!burning.is_finished());
    cancel.cancel();
    assert_eq!(burning.await.unwrap().outcome, Outcome::Revoked);
}

/// A task sees its deadline (`context.deadline`: time to the hard limit,
/// to the soft one, fuel left) and, past the soft time limit, every
/// capability call answers `HostError::TimeUp`: the task finishes up and
/// succeeds before the hard limit would have stopped it.
#[tokio::test]
async fn past_the_soft_time_limit_a_task_is_told_to_finish_up() {
    let sandbox = sandbox();
    let module = sandbox.load(&guest_bytes("finisher")).unwrap();
    let budget = 1_000_000_000_000;
    let request = RunRequest {
        limits: RunLimits {
            soft_timeout: Some(Duration::from_millis(1000)),
            ..limits(Some(budget), 64, Duration::from_secs(20))
        },
        ..RunRequest::new("{}")
    };
    let report = sandbox.run(&module, request).await;
    let Outcome::Success(output) = &report.outcome else {
        panic!("{:?}\nstderr: {}", report.outcome, report.stderr);
    };
    let v: serde_json::Value = serde_json::from_str(output).unwrap();
    assert!(
        v["time_up"]
            .as_str()
            .unwrap()
            .starts_with("soft time limit: the job's soft time limit (1000 ms) has passed"),
        "{v}"
    );
    assert!(v["rounds"].as_u64().unwrap() > 1, "{v}");
    let first = &v["first"];
    let soft = first["soft_time_left_ms"].as_u64().unwrap();
    assert!(soft > 0 && soft <= 1000, "{v}");
    let left = first["time_left_ms"].as_u64().unwrap();
    assert!(left > 19_000 && left <= 20_000, "{v}");
    assert_eq!(v["last"]["soft_time_left_ms"], 0, "{v}");
    assert!(v["last"]["time_left_ms"].as_u64().unwrap() < left, "{v}");
    // Fuel went down while it worked, and says what the report says.
    let fuel_first = first["fuel_left"].as_u64().unwrap();
    let fuel_last = v["last"]["fuel_left"].as_u64().unwrap();
    assert!(fuel_first <= budget && fuel_last < fuel_first, "{v}");
    let used = report.fuel_used.unwrap();
    assert!(budget - fuel_last <= used, "{v}: used {used}");

    // Without a soft limit, nothing is denied for it.
    let report = run_with(
        &sandbox,
        &module,
        r#"{"max_rounds": 3}"#,
        limits(None, 64, Duration::from_secs(20)),
    )
    .await;
    assert_kind(&report, "fail");
    assert!(
        report
            .outcome
            .to_string()
            .contains("no soft time limit in 3 rounds"),
        "{:?}",
        report.outcome
    );
}

/// The module cache does not grow forever: artifacts unused for
/// `cache_max_idle` and unfinished writes an hour old are removed when a
/// sandbox starts; a hit marks an artifact used; other files stay.
#[test]
fn the_module_cache_forgets_what_was_not_used() {
    use std::time::{Duration, SystemTime};
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path();
    let age = |name: &str, days: u64| crate::builtin_tasks::file_aged(dir, name, days);
    age("old.abc.cwasm", 31);
    age("recent.abc.cwasm", 29);
    age("crashed.abc.tmp123", 1);
    age("notes.txt", 365);
    let month = Duration::from_secs(30 * 24 * 3600);
    assert_eq!(runner::sandbox::prune_cache_dir(dir, month).unwrap(), 2);
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["notes.txt", "recent.abc.cwasm"]);

    // A sandbox prunes when it starts; a hit refreshes the artifact, which
    // then outlives the next prune.
    let config = SandboxConfig {
        cache_dir: Some(dir.to_path_buf()),
        cache_max_idle: month,
        max_concurrent_runs: 8,
        ..SandboxConfig::default()
    };
    let bytes = support::ok_component();
    Sandbox::new(config.clone()).unwrap().load(&bytes).unwrap();
    let artifact = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm") && !p.ends_with("recent.abc.cwasm"))
        .expect("the compiled artifact");
    age("recent.abc.cwasm", 31);
    let second = Sandbox::new(config.clone()).unwrap();
    assert!(!dir.join("recent.abc.cwasm").exists(), "pruned at start");
    std::fs::File::options()
        .write(true)
        .open(&artifact)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(31 * 24 * 3600))
        .unwrap();
    let module = second.load(&bytes).unwrap();
    assert_eq!(module.origin, ModuleOrigin::DiskCache);
    assert_eq!(runner::sandbox::prune_cache_dir(dir, month).unwrap(), 0);
    assert!(artifact.exists());
}
