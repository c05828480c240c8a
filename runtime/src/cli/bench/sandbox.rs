//! `runner bench sandbox` measures, for the built-in `hello` (or `--module`):
//! - instantiate + run latency (median, p99) over many sequential runs with
//!   a warm `InstancePre` (a fresh store, WASI context and instance each);
//! - runs per second with one concurrent run per core;
//! - the cost of fuel metering on a CPU-bound guest: the same guest on an
//!   engine with fuel metering and on one without.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use super::{bench_module, percentile, progress_bar};

use crate::sandbox::{LoadedModule, Outcome, RunLimits, RunRequest, Sandbox, SandboxConfig};

#[derive(Args, Debug)]
pub struct SandboxBench {
    /// The component to measure (default: the built-in `hello`).
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Its input.
    #[arg(long, default_value = r#"{"name":"bench"}"#)]
    pub input: String,
    /// Sequential runs for the latency figures.
    #[arg(long, default_value_t = 10_000)]
    pub runs: u64,
    /// Runs for the throughput figure (0: skip it).
    #[arg(long, default_value_t = 50_000)]
    pub throughput_runs: u64,
    /// Concurrent runs for the throughput figure (default: one per core).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// A CPU-bound component for the fuel figure; it must return on its own
    /// (default: a built-in WAT loop of 300 million xorshift steps; the
    /// test program `fuel_burner` with `--cpu-input '{"rounds":300000000}'`
    /// measures a Rust guest).
    #[arg(long)]
    pub cpu_module: Option<PathBuf>,
    /// Its input.
    #[arg(long, default_value = r#"{"rounds":300000000}"#)]
    pub cpu_input: String,
    /// Runs of the CPU-bound component per engine (0: skip the fuel figure).
    #[arg(long, default_value_t = 5)]
    pub cpu_runs: u32,
}

pub async fn execute(args: SandboxBench) -> anyhow::Result<ExitCode> {
    let (bytes, module_name) = bench_module(args.module.as_deref())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let concurrency = args.concurrency.unwrap_or(cores).max(1);

    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let started = Instant::now();
    let module = sandbox
        .load(&bytes)
        .with_context(|| format!("loading {module_name}"))?;
    let compile = started.elapsed();

    println!("runner bench sandbox");
    println!("  module        {} ({})", module_name, module.hash);
    println!("  compile       {:.1} ms", ms(compile));

    // Warm up the pools, the caches and the allocator.
    for _ in 0..200 {
        expect_success(&sandbox.run(&module, request(&args.input)).await.outcome)?;
    }

    let bar = progress_bar(args.runs, "instantiate+run");
    let mut samples = Vec::with_capacity(args.runs as usize);
    for _ in 0..args.runs {
        let start = Instant::now();
        let report = sandbox.run(&module, request(&args.input)).await;
        samples.push(start.elapsed());
        expect_success(&report.outcome)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    samples.sort();
    println!(
        "  instantiate+run over {} runs: median {:.1} µs, p99 {:.1} µs, min {:.1} µs{}",
        samples.len(),
        us(percentile(&samples, 50.0)),
        us(percentile(&samples, 99.0)),
        us(samples[0]),
        // The budget is the built-in Rust `hello`'s; another module has its own.
        if args.module.is_none() {
            " (budget: median <= 50 µs)"
        } else {
            ""
        },
    );

    if args.throughput_runs > 0 {
        let (runs, elapsed) = throughput(&sandbox, &module, &args, concurrency).await?;
        println!(
            "  throughput    {:.0} runs/s ({runs} runs, {concurrency} concurrent, {cores} cores, {:.2} s)",
            runs as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    }
    if args.cpu_runs > 0 {
        fuel_overhead(&args).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn throughput(
    sandbox: &Sandbox,
    module: &Arc<LoadedModule>,
    args: &SandboxBench,
    concurrency: usize,
) -> anyhow::Result<(u64, Duration)> {
    let total = args.throughput_runs;
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(total, "throughput");
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let sandbox = sandbox.clone();
        let module = Arc::clone(module);
        let next = Arc::clone(&next);
        let input = args.input.clone();
        let bar = bar.clone();
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let report = sandbox.run(&module, request(&input)).await;
                expect_success(&report.outcome)?;
                bar.inc(1);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok((total, elapsed))
}

async fn fuel_overhead(args: &SandboxBench) -> anyhow::Result<()> {
    let mut guests = Vec::new();
    match &args.cpu_module {
        Some(path) => guests.push((
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            args.cpu_input.clone(),
            path.display().to_string(),
        )),
        None => guests.push((
            wat::parse_str(XORSHIFT_LOOP).context("assembling the built-in CPU-bound component")?,
            "{}".to_string(),
            "built-in WAT loop (300M xorshift steps)".to_string(),
        )),
    }
    for (bytes, input, name) in guests {
        fuel_overhead_of(&bytes, &input, &name, args.cpu_runs).await?;
    }
    Ok(())
}

async fn fuel_overhead_of(bytes: &[u8], input: &str, name: &str, runs: u32) -> anyhow::Result<()> {
    let mut medians = Vec::new();
    for fuel_metering in [true, false] {
        let sandbox = Sandbox::new(SandboxConfig {
            fuel_metering,
            ..SandboxConfig::default()
        })?;
        let module = sandbox
            .load(bytes)
            .context("loading the CPU-bound component")?;
        let label = if fuel_metering { "fuel on" } else { "fuel off" };
        let bar = progress_bar(u64::from(runs), label);
        let mut times = Vec::new();
        let mut fuel = None;
        for _ in 0..runs {
            let mut req = RunRequest::new(input);
            req.limits.timeout = Duration::from_secs(600);
            let report = sandbox.run(&module, req).await;
            expect_success(&report.outcome)?;
            times.push(report.duration);
            fuel = fuel.or(report.fuel_used);
            bar.inc(1);
        }
        bar.finish_and_clear();
        times.sort();
        let median = times[times.len() / 2];
        medians.push(median);
        let fuel = fuel.map_or_else(String::new, |f| format!(", {f} fuel"));
        println!(
            "  cpu-bound     {label:<8} median {:.1} ms{fuel}  [{name}]",
            ms(median)
        );
    }
    let overhead = (medians[0].as_secs_f64() / medians[1].as_secs_f64() - 1.0) * 100.0;
    println!("  fuel metering overhead: {overhead:+.1}% on {name}");
    Ok(())
}

fn request(input: &str) -> RunRequest {
    RunRequest {
        input: input.to_string(),
        limits: RunLimits::default(),
        ..RunRequest::default()
    }
}

fn expect_success(outcome: &Outcome) -> anyhow::Result<()> {
    if !outcome.is_success() {
        bail!("a benchmark run did not succeed: {outcome}");
    }
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A task component in WAT that spins through 300 million xorshift steps and
/// returns `{"done":true}`: CPU-bound, no host calls, no allocation.
const XORSHIFT_LOOP: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (data (i32.const 16) "{\22done\22:true}")
    (func (export "run") (param i32 i32) (result i32)
      (local $i i32) (local $x i64)
      (local.set $x (i64.const 88172645463325252))
      (local.set $i (i32.const 300000000))
      (loop $next
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br_if $next (local.get $i)))
      (i64.store (i32.const 128) (local.get $x))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 16))
      (i32.store (i32.const 72) (i32.const 13))
      (i32.const 64)))
  (core instance $i (instantiate $m))
  (type $task-error (variant (case "retry" string) (case "fail" string)))
  (export $te "task-error" (type $task-error))
  (func (export "run") (param "input" string) (result (result string (error $te)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "cabi_realloc")))))
"#;
