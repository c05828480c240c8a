//! The sandbox: runs one task component once, safely and fast.
//!
//! It owns the process's single wasmtime [`Engine`] (component model, async,
//! pooling allocator, fuel, epoch interruption with a background ticker), the
//! compiled modules, and the host side of the `runner:task` imports
//! ([`host`]). It never decides *whether* a job should run or be retried:
//! it reports how a run ended ([`Outcome`]) and the worker decides.
//!
//! # Use
//!
//! ```no_run
//! # async fn demo(bytes: &[u8]) -> anyhow::Result<()> {
//! use runner::sandbox::{RunRequest, Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::new(SandboxConfig::default())?; // once per process
//! let module = sandbox.load(bytes)?;                     // once per module hash
//! let report = sandbox.run(&module, RunRequest::new(r#"{"name":"Ada"}"#)).await;
//! println!("{}", report.outcome);
//! # Ok(()) }
//! ```
//!
//! # Loading
//!
//! [`Sandbox::load`] hashes the bytes ([`ModuleHash`], sha256), and compiles
//! each hash once per process; with a `cache_dir` the compiled artifact is
//! also kept on disk, keyed by the hash and the engine's compatibility hash,
//! so the next process deserializes it instead of compiling. A component is
//! checked against the `task` world before it is accepted: [`LoadError`]
//! names a missing `run` export or an import this runner does not provide
//! (only `runner:task/*@0.1.0` and WASI 0.2). The result, a
//! [`LoadedModule`], keeps a linked `InstancePre`.
//!
//! # Running
//!
//! [`Sandbox::run`] gives every run a fresh store: a fuel budget (yielding
//! to the executor every `fuel_yield_interval` units), a memory limit (a
//! `ResourceLimiter` that remembers it said no), a wall-clock deadline and
//! cancellation (checked at every epoch tick, and while the guest waits in a
//! host call), and capped stdout/stderr/log buffers. WASI p2 is linked with
//! clocks, random and captured stdio; no preopens, no network. However a run
//! ends, it ends as one [`Outcome`] and leaves the process and the next run
//! untouched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::unix::fs::DirBuilderExt as _;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

pub mod bindings;
mod engine;
pub mod host;
mod limits;
mod loaded;
mod module;
mod pipe;
mod run;

pub use bindings::HostError;
/// The `runner:task` types as generated from the WIT (`wit::mail::Message`,
/// `wit::http::Request`, ...), for implementors of the host service traits.
pub use bindings::runner::task as wit;
pub use engine::SandboxConfig;
pub use host::{HostEnv, LogLevel, LogLine, Progress, ProgressSink};
pub use module::{LoadError, LoadedModule, ModuleHash, ModuleOrigin, ParseHashError};
pub use run::{
    CancelToken, FuelMeter, JobInfo, MAX_RANDOM_BYTES, MAX_RESOURCES, Outcome, RunLimits,
    RunReport, RunRequest,
};

use bindings::{Task, TaskPre};
use run::RunState;

/// The process's sandbox. Create one and clone it: clones share the engine,
/// the compiled modules and the instance pools.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<RunState>,
    config: SandboxConfig,
    compat_key: String,
    modules: Mutex<loaded::Loaded>,
    compilations: AtomicU64,
    /// One permit per instance slot in the pools: a run past the pool's
    /// capacity waits here instead of failing to instantiate.
    slots: Semaphore,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let engine = engine::build_engine(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        Task::add_to_linker::<RunState, HasSelf<RunState>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("linking the runner:task imports")?;
        if let Some(dir) = &config.cache_dir {
            // Only the runner's user may write native code the runner loads.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating the module cache {}", dir.display()))?;
            match prune_cache_dir(dir, config.cache_max_idle) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(removed = n, dir = %dir.display(), "pruned compiled modules unused for {:?}", config.cache_max_idle)
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "cannot prune the module cache: {e}")
                }
            }
        }
        engine::start_epoch_ticker(&engine, config.epoch_tick)?;
        let compat_key = engine::compatibility_key(&engine);
        let slots = Semaphore::new(config.max_concurrent_runs as usize);
        let modules = Mutex::new(loaded::Loaded::new(config.loaded_modules_max));
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                config,
                compat_key,
                modules,
                compilations: AtomicU64::new(0),
                slots,
            }),
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// How many components this sandbox has compiled from source (not
    /// counting those read back from the disk cache).
    pub fn compilations(&self) -> u64 {
        self.inner.compilations.load(Ordering::Relaxed)
    }

    /// The module with this hash, if this process keeps it loaded: one of
    /// the `loaded_modules_max` used most recently, or one still in use.
    pub fn get(&self, hash: &ModuleHash) -> Option<Arc<LoadedModule>> {
        self.modules().get(hash)
    }

    /// How many modules the sandbox holds loaded (at most
    /// `loaded_modules_max`; others may live on while runs use them).
    pub fn modules_held(&self) -> usize {
        self.modules().held()
    }

    /// Validates and compiles a component, once per hash.
    ///
    /// Compiling takes from milliseconds to seconds of CPU: from async code,
    /// call it in `spawn_blocking` unless the module is known to be loaded.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedModule>, LoadError> {
        module::check_header(bytes)?;
        let hash = ModuleHash::of(bytes);
        if let Some(loaded) = self.get(&hash) {
            return Ok(loaded);
        }
        let engine = &self.inner.engine;

        let cached = self
            .cache_path(&hash)
            .and_then(|path| self.read_cache(&path));
        let (component, origin) = match cached {
            Some(component) => (component, ModuleOrigin::DiskCache),
            None => {
                let component = Component::new(engine, bytes)
                    .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
                self.inner.compilations.fetch_add(1, Ordering::Relaxed);
                (component, ModuleOrigin::Compiled)
            }
        };

        let imports = module::check_world(engine, &component)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre = TaskPre::new(instance_pre).map_err(|e| LoadError::WrongWorld {
            missing: format!("{e:#}"),
        })?;

        if origin == ModuleOrigin::Compiled
            && let Some(path) = self.cache_path(&hash)
        {
            self.write_cache(&component, &path);
        }

        let loaded = Arc::new(LoadedModule {
            hash,
            imports,
            origin,
            pre,
        });
        // Another thread may have loaded the same hash meanwhile: keep one.
        Ok(self.modules().insert(loaded))
    }

    /// Runs the module once with the request's input, limits and host
    /// environment. Never fails: how the run ended is the report's outcome.
    /// A run cancelled while it waits for a slot (every slot busy) ends
    /// revoked without starting.
    pub async fn run(&self, module: &LoadedModule, req: RunRequest) -> RunReport {
        let inner = &self.inner;
        let slot = tokio::select! {
            biased;
            () = req.cancel.cancelled() => return RunReport::not_run(Outcome::Revoked),
            slot = inner.slots.acquire() => slot,
        };
        let Ok(_slot) = slot else {
            return RunReport::not_run(Outcome::HostFailure("the sandbox is shutting down".into()));
        };
        let env = run::RunEnv {
            engine: &inner.engine,
            max_memory_bytes: inner.config.max_memory_bytes,
            fuel_metering: inner.config.fuel_metering,
            fuel_yield_interval: inner.config.fuel_yield_interval,
        };
        run::run(env, module, req).await
    }

    fn modules(&self) -> std::sync::MutexGuard<'_, loaded::Loaded> {
        // No code that can panic runs under the lock with the map half
        // changed: a panic elsewhere cannot leave it inconsistent.
        self.inner
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cache_path(&self, hash: &ModuleHash) -> Option<PathBuf> {
        let dir = self.inner.config.cache_dir.as_ref()?;
        Some(dir.join(format!("{}.{}.cwasm", hash.to_hex(), self.inner.compat_key)))
    }

    fn read_cache(&self, path: &Path) -> Option<Component> {
        if !path.is_file() {
            return None;
        }
        // SAFETY: the cache directory is the runner's own (see
        // `SandboxConfig::cache_dir`), files are written whole by
        // `write_cache`, and their names carry the engine's compatibility
        // hash, so only artifacts this engine produced are read.
        match unsafe { Component::deserialize_file(&self.inner.engine, path) } {
            Ok(component) => {
                // Used now: not pruned for another `cache_max_idle`.
                let touched = std::fs::File::open(path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                if let Err(e) = touched {
                    tracing::debug!(path = %path.display(), "cannot mark a compiled module used: {e}");
                }
                Some(component)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable compiled module: {e:#}");
                None
            }
        }
    }

    /// Best effort: a failure to cache costs a compile in the next process,
    /// nothing more.
    fn write_cache(&self, component: &Component, path: &Path) {
        let result = (|| -> anyhow::Result<()> {
            use std::io::Write as _;
            let bytes = component.serialize()?;
            // A name no other writer uses, created here: processes of one
            // PID in containers sharing the directory, or two threads
            // caching the same module, each write a file of their own (a
            // shared one could be truncated while renamed into place).
            let tmp = path.with_extension(format!(
                "tmp{}{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            let written = file.write_all(&bytes).and_then(|()| file.sync_data());
            drop(file);
            if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), "cannot cache the compiled module: {e:#}");
        }
    }
}

/// Removes from the module cache `dir` the compiled artifacts (`*.cwasm`)
/// unused for `max_idle` (by modification time, which a hit refreshes),
/// and the temporary files of writes that never finished (an hour old).
/// Other files are left alone. Returns how many were removed.
pub fn prune_cache_dir(dir: &Path, max_idle: Duration) -> std::io::Result<usize> {
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `write_cache` writes `<hash>.<engine>.tmp<pid><random>`, then
        // renames it.
        let unfinished = name.rsplit_once('.').is_some_and(|(_, ext)| {
            ext.strip_prefix("tmp")
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        });
        let limit = if name.ends_with(".cwasm") {
            max_idle
        } else if unfinished {
            Duration::from_secs(3600)
        } else {
            continue;
        };
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let idle = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if idle > limit {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Another process pruned it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}
