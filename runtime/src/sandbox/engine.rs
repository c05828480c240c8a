//! The process's wasmtime engine: its settings, and the background thread
//! that advances its epoch (the clock every running guest checks).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How the process's sandbox is set up. One per process; per-run limits are
/// in [`RunLimits`](super::RunLimits).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled artifacts are kept between processes. `None`: compile
    /// in every process. Must be writable only by the runner: artifacts are
    /// native code loaded without re-validation.
    pub cache_dir: Option<PathBuf>,
    /// A compiled artifact in `cache_dir` unused for this long is removed
    /// when a sandbox starts (each use refreshes its modification time), so
    /// that old module versions and the artifacts of an older wasmtime do
    /// not pile up.
    pub cache_max_idle: Duration,
    /// How many compiled modules the process keeps loaded in memory: those
    /// used most recently. Another is loaded again when needed (read back
    /// from `cache_dir` when there is one, else compiled), so that a
    /// long-lived process that sees many module versions does not keep
    /// the compiled code of every one (tens of MB each for Python).
    pub loaded_modules_max: usize,
    /// The largest linear memory any run may have: the size of a memory slot
    /// in the pooling allocator. A run's `memory_bytes` above this is capped
    /// to it.
    pub max_memory_bytes: u64,
    /// How many runs may be instantiated at once; the pools are sized for
    /// it, and further runs wait for a slot.
    pub max_concurrent_runs: u32,
    /// How often the epoch advances: the granularity of wall-clock deadlines
    /// and revocation, and how often a guest yields to the executor.
    pub epoch_tick: Duration,
    /// Count fuel. Off only for measuring what fuel metering costs.
    pub fuel_metering: bool,
    /// With fuel metering, a guest yields to the executor after this much
    /// fuel, so a CPU-bound guest never holds an executor thread for long.
    pub fuel_yield_interval: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            cache_max_idle: Duration::from_secs(30 * 24 * 3600),
            loaded_modules_max: 64,
            max_memory_bytes: 256 << 20,
            max_concurrent_runs: 500,
            epoch_tick: Duration::from_millis(10),
            fuel_metering: true,
            fuel_yield_interval: 1_000_000,
        }
    }
}

/// Per run, at most this many core instances, memories and tables from the
/// pools. A Rust `wasm32-wasip2` component uses a handful of each (the
/// program, the WASI adapter and the glue modules `wit-component` adds); a
/// Python component from componentize-py 14 core instances, 1 memory and
/// 2 tables. The pools hold this much per run, and each component is held
/// to it: one that needs more is refused when it is loaded, so that no run
/// can take the pool slots of others (they would fail to instantiate).
const CORE_INSTANCES_PER_RUN: u32 = 16;
const MEMORIES_PER_RUN: u32 = 2;
const TABLES_PER_RUN: u32 = 4;

/// Reusing an instance slot: with Linux's `PAGEMAP_SCAN` (6.7+) wasmtime
/// finds the pages a run dirtied and restores just those, up to this many
/// bytes, instead of `madvise`-ing the memory away and taking a page fault
/// per page on the next run. For `hello` that halves instantiate+run (from
/// ~38 to ~19 µs here). Without the ioctl, keeping memory resident means
/// `memset`-ing its low addresses, which costs more than it saves for a Rust
/// guest (its stack ends at 1 MiB), so it stays off.
///
/// Since wasmtime 50 the scan goes on past its buffer of dirty regions, so a
/// CPython run, whose reference counts dirty hundreds of scattered pages
/// (under 2 MiB in all), is reset in place too: no page faults on the next
/// run, against about 290 with wasmtime 48's scan, which stopped at 32
/// regions and decommitted the rest. A larger budget changed nothing for the
/// Python `hello` (32 MiB: same median) and keeps more memory resident per
/// slot.
const MEMORY_KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Tables are small: resetting them with `memset` beats `madvise`.
const TABLE_KEEP_RESIDENT_BYTES: usize = 1 << 20;

pub(crate) fn build_engine(cfg: &SandboxConfig) -> anyhow::Result<Engine> {
    anyhow::ensure!(
        cfg.max_memory_bytes <= 4 << 30,
        "max_memory_bytes is {}, above the 4 GiB a 32-bit linear memory can address",
        cfg.max_memory_bytes
    );
    anyhow::ensure!(
        cfg.max_concurrent_runs > 0,
        "max_concurrent_runs must be at least 1"
    );
    anyhow::ensure!(!cfg.epoch_tick.is_zero(), "epoch_tick must not be zero");

    let runs = cfg.max_concurrent_runs;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(runs)
        .total_core_instances(runs.saturating_mul(CORE_INSTANCES_PER_RUN))
        .total_memories(runs.saturating_mul(MEMORIES_PER_RUN))
        .total_tables(runs.saturating_mul(TABLES_PER_RUN))
        // One fiber stack for instantiation and the call, per run.
        .total_stacks(runs)
        .max_core_instances_per_component(CORE_INSTANCES_PER_RUN)
        .max_memories_per_component(MEMORIES_PER_RUN)
        .max_tables_per_component(TABLES_PER_RUN)
        .max_memory_size(usize::try_from(cfg.max_memory_bytes).context("max_memory_bytes")?)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT_BYTES);
    }

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(cfg.fuel_metering)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine")
}

/// Advances the engine's epoch every `tick` on a thread of its own, until
/// the engine is dropped.
pub(crate) fn start_epoch_ticker(engine: &Engine, tick: Duration) -> anyhow::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("runner-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .context("starting the epoch thread")?;
    Ok(())
}

/// A short digest of everything that makes compiled code valid for this
/// engine (wasmtime version, target, settings), for cache file names.
pub(crate) fn compatibility_key(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            // Only the digest taken below is used.
            0
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}
