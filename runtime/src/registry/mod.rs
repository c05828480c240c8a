//! The registry's storage: task modules by sha256, and task names bound to a
//! module with their defaults (queue, retry policy, limits, rate limit) and
//! grants. Workers resolve a job's module here; producers resolve task names.
//!
//! Two stores: [`RedisRegistry`] (every worker on every machine sees it;
//! each process keeps the bindings it read while it hears every re-bind,
//! `cache.rs`) and [`LocalRegistry`] (memory, optionally backed by a
//! directory; for the embedded broker). This layer stores and returns; validating a component
//! and checking grants against its imports belong to the upload path.

pub mod cache;
pub mod grants;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use runner_host_fns::redis_conn::Counted;
use serde::{Deserialize, Serialize};

pub use crate::names::{ModuleHash, TaskName, TaskNameError};
use crate::queue::{JobLimits, RetryPolicy};
pub use grants::{Capability, JobsGrant, KvGrant, TaskGrants};

/// A task name bound to a module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskBinding {
    #[schema(value_type = TaskName)]
    pub name: String,
    pub module: ModuleHash,
    #[serde(default = "default_queue")]
    #[schema(pattern = "^(?!\\.{1,2}$)[A-Za-z0-9_.:-]{1,100}$")]
    pub queue: String,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub limits: JobLimits,
    /// `10/m` style, global across workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ttl_ms: Option<u64>,
    /// Its jobs store no result (their state is kept), unless a job asks
    /// otherwise.
    #[serde(default, skip_serializing_if = "crate::queue::job::is_false")]
    pub ignore_result: bool,
    /// The priority of its jobs that set none (0 to 9, higher first).
    #[serde(default, skip_serializing_if = "crate::queue::job::is_zero_u8")]
    #[schema(maximum = 9)]
    pub priority: u8,
    /// What the task may reach; interpreted by the sandbox's host side.
    #[serde(default)]
    pub grants: TaskGrants,
    #[serde(default = "Utc::now")]
    pub bound_at: DateTime<Utc>,
}

fn default_queue() -> String {
    crate::queue::DEFAULT_QUEUE.to_string()
}

impl TaskBinding {
    pub fn new(name: impl Into<String>, module: ModuleHash) -> Self {
        TaskBinding {
            name: name.into(),
            module,
            queue: default_queue(),
            retry: RetryPolicy::default(),
            limits: JobLimits::default(),
            rate_limit: None,
            result_ttl_ms: None,
            ignore_result: false,
            priority: 0,
            grants: TaskGrants::default(),
            bound_at: Utc::now(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleInfo {
    pub hash: ModuleHash,
    pub size: u64,
    pub uploaded_at: DateTime<Utc>,
    /// Every interface the component imports (`runner:task/kv@0.1.0`,
    /// `wasi:cli/stdout@0.2.3`, ...), as found when it was validated.
    #[serde(default)]
    pub imports: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("registry directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("unknown module {0}")]
    UnknownModule(ModuleHash),
    #[error("corrupt registry entry: {0}")]
    Corrupt(String),
    /// Another registry (in this process or another) has the directory
    /// open: each keeps its bindings in memory and rewrites `tasks.json`
    /// whole, so two would lose each other's binds.
    #[error(
        "{} is in use by another runner (another `runner dev` on the same data directory?): \
         stop it, or give this one another data directory",
        .0.display()
    )]
    InUse(PathBuf),
}

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Stores a module under its sha256 with what it imports; idempotent
    /// (a second upload keeps the first record). Returns the stored record
    /// and whether this call created it.
    async fn store_module(
        &self,
        bytes: &[u8],
        imports: Vec<String>,
    ) -> Result<(ModuleInfo, bool), RegistryError>;
    /// Stores a module without recording its imports. Returns the hash.
    async fn put_module(&self, bytes: &[u8]) -> Result<ModuleHash, RegistryError> {
        Ok(self.store_module(bytes, Vec::new()).await?.0.hash)
    }
    async fn module_info(&self, hash: &ModuleHash) -> Result<Option<ModuleInfo>, RegistryError>;
    async fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, RegistryError>;
    async fn has_module(&self, hash: &ModuleHash) -> Result<bool, RegistryError>;
    async fn modules(&self) -> Result<Vec<ModuleInfo>, RegistryError>;
    /// Binds (or re-binds) a task name; the previous binding goes to history.
    async fn bind(&self, binding: TaskBinding) -> Result<(), RegistryError>;
    async fn task(&self, name: &str) -> Result<Option<TaskBinding>, RegistryError>;
    async fn tasks(&self) -> Result<Vec<TaskBinding>, RegistryError>;
    /// Earlier bindings of `name`, newest first.
    async fn history(&self, name: &str) -> Result<Vec<TaskBinding>, RegistryError>;
}

/// The registry in Redis: `runner:module:<hex>` (bytes), `runner:modules`
/// (hash of metadata), `runner:tasks` (hash of bindings),
/// `runner:task-history:{runner:tasks}:<name>` (list, newest first, in the
/// slot of `runner:tasks`; an earlier build kept it at
/// `runner:task-history:<name>`, still read).
#[derive(Clone)]
pub struct RedisRegistry {
    conn: Counted,
    /// Bindings read, while their change feed is up (`cache.rs`).
    cache: Option<Arc<cache::BindingCache>>,
}

impl RedisRegistry {
    /// A registry on an open connection (the broker's: see
    /// `RedisBroker::connection`) that reads every binding from Redis.
    pub fn new(conn: Counted) -> Self {
        RedisRegistry { conn, cache: None }
    }

    /// A registry that keeps the bindings it read while it hears every
    /// re-bind on `endpoint` (see `cache.rs`): what producers use, so that
    /// an enqueue does not read its task's binding first.
    pub fn cached(conn: Counted, endpoint: &crate::queue::redis::RedisEndpoint) -> Self {
        Self::cached_for(conn, endpoint, cache::BINDING_CACHE_FOR)
    }

    /// [`RedisRegistry::cached`], keeping an entry at most `max_age`.
    pub fn cached_for(
        conn: Counted,
        endpoint: &crate::queue::redis::RedisEndpoint,
        max_age: std::time::Duration,
    ) -> Self {
        RedisRegistry {
            conn,
            cache: Some(cache::BindingCache::start(endpoint.clone(), max_age)),
        }
    }

    async fn read_task(&self, name: &str) -> Result<Option<TaskBinding>, RegistryError> {
        let v: Option<String> = self.conn.clone().hget(TASKS_KEY, name).await?;
        v.map(|v| serde_json::from_str(&v).map_err(|e| RegistryError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Connects to `url` (one server or a cluster, as the broker does).
    pub async fn connect(url: &str) -> Result<Self, RegistryError> {
        let endpoint = crate::queue::redis::RedisEndpoint::open(url, &Default::default())?;
        Ok(Self::new(endpoint.connect().await?))
    }
}

const HISTORY_KEEP: isize = 50;

/// The hash of bindings, by task name.
const TASKS_KEY: &str = "runner:tasks";

/// The earlier bindings of `name`, newest first: a list in the slot of
/// [`TASKS_KEY`] (its hash tag is that key's name), so that one script
/// writes both on a cluster.
fn history_key(name: &str) -> String {
    format!("runner:task-history:{{{TASKS_KEY}}}:{name}")
}

/// Binds a name, pushing the binding it replaces to the history, and
/// tells every cached registry (`cache.rs`).
fn bind_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        redis::Script::new(
            r"
-- KEYS: the bindings hash, the name's history
-- ARGV: name, binding, how many earlier bindings to keep, change channel
local prev = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if prev then
  redis.call('LPUSH', KEYS[2], prev)
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
redis.call('PUBLISH', ARGV[4], ARGV[1])
",
        )
    })
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn store_module(
        &self,
        bytes: &[u8],
        imports: Vec<String>,
    ) -> Result<(ModuleInfo, bool), RegistryError> {
        let hash = ModuleHash::of(bytes);
        let hex = hash.to_hex();
        let info = ModuleInfo {
            hash,
            size: bytes.len() as u64,
            uploaded_at: Utc::now(),
            imports,
        };
        let mut conn = self.conn.clone();
        // Bytes first, metadata second: a module is listed (and
        // `has_module` says yes) only once its bytes are stored.
        let _: bool = conn.set_nx(format!("runner:module:{hex}"), bytes).await?;
        let created: bool = conn
            .hset_nx(
                "runner:modules",
                &hex,
                serde_json::to_string(&info).unwrap_or_default(),
            )
            .await?;
        if created {
            Ok((info, true))
        } else {
            Ok((self.module_info(&hash).await?.unwrap_or(info), false))
        }
    }

    async fn module_info(&self, hash: &ModuleHash) -> Result<Option<ModuleInfo>, RegistryError> {
        let hex = hash.to_hex();
        let v: Option<String> = self.conn.clone().hget("runner:modules", hex).await?;
        v.map(|v| serde_json::from_str(&v).map_err(|e| RegistryError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, RegistryError> {
        let hex = hash.to_hex();
        Ok(self
            .conn
            .clone()
            .get(format!("runner:module:{hex}"))
            .await?)
    }

    async fn has_module(&self, hash: &ModuleHash) -> Result<bool, RegistryError> {
        let hex = hash.to_hex();
        Ok(self.conn.clone().hexists("runner:modules", hex).await?)
    }

    async fn modules(&self) -> Result<Vec<ModuleInfo>, RegistryError> {
        let all: HashMap<String, String> = self.conn.clone().hgetall("runner:modules").await?;
        let mut out: Vec<ModuleInfo> = all
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        out.sort_by_key(|m| m.uploaded_at);
        Ok(out)
    }

    async fn bind(&self, binding: TaskBinding) -> Result<(), RegistryError> {
        let json =
            serde_json::to_string(&binding).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let mut conn = self.conn.clone();
        // One script: the binding it replaces is the one it pushes to the
        // history, however many binds race (a read apart from the write
        // pushed the same binding for each of them, and lost the others).
        // Both keys share a slot, so one script writes both on a cluster.
        let _: () = bind_script()
            .key(TASKS_KEY)
            .key(history_key(&binding.name))
            .arg(&binding.name)
            .arg(json)
            .arg(HISTORY_KEEP)
            .arg(cache::TASKS_CHANNEL)
            .invoke_async(&mut conn)
            .await?;
        if let Some(cache) = &self.cache {
            cache.forget(&binding.name);
        }
        Ok(())
    }

    async fn task(&self, name: &str) -> Result<Option<TaskBinding>, RegistryError> {
        let Some(cache) = &self.cache else {
            return self.read_task(name).await;
        };
        if let Some(b) = cache.get(name) {
            return Ok(Some(b));
        }
        let ticket = cache.before_read();
        let read = self.read_task(name).await?;
        if let Some(b) = &read {
            cache.store(ticket, b);
        }
        Ok(read)
    }

    async fn tasks(&self) -> Result<Vec<TaskBinding>, RegistryError> {
        let all: HashMap<String, String> = self.conn.clone().hgetall(TASKS_KEY).await?;
        let mut out: Vec<TaskBinding> = all
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn history(&self, name: &str) -> Result<Vec<TaskBinding>, RegistryError> {
        let mut conn = self.conn.clone();
        let mut v: Vec<String> = conn.lrange(history_key(name), 0, HISTORY_KEEP - 1).await?;
        // Bindings replaced before the history moved to `history_key`
        // (older, so after), read-only: nothing writes there now.
        if (v.len() as isize) < HISTORY_KEEP {
            let older: Vec<String> = conn
                .lrange(
                    format!("runner:task-history:{name}"),
                    0,
                    HISTORY_KEEP - 1 - v.len() as isize,
                )
                .await?;
            v.extend(older);
        }
        Ok(v.iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }
}

#[derive(Default)]
struct LocalState {
    modules: HashMap<ModuleHash, (Vec<u8>, ModuleInfo)>,
    tasks: HashMap<String, TaskBinding>,
    history: HashMap<String, Vec<TaskBinding>>,
}

/// A registry in this process, optionally persisted under a directory
/// (`modules/<hex>.wasm`, `tasks.json`) so that `runner dev` keeps its
/// uploads across restarts. One registry at a time has a directory open:
/// it holds an exclusive lock on `<dir>/lock` until it is dropped.
pub struct LocalRegistry {
    dir: Option<PathBuf>,
    state: Mutex<LocalState>,
    /// The open `<dir>/lock`, locked: released when the registry is dropped
    /// (or its process ends, however it ends).
    _lock: Option<std::fs::File>,
}

impl LocalRegistry {
    /// Memory only.
    pub fn in_memory() -> Self {
        LocalRegistry {
            dir: None,
            state: Mutex::new(LocalState::default()),
            _lock: None,
        }
    }

    /// Loads (and later saves) the registry under `dir`. Refused with
    /// [`RegistryError::InUse`] while another registry has `dir` open, in
    /// this process or another.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir.join("modules"))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RegistryError::InUse(dir.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let mut st = LocalState::default();
        for entry in std::fs::read_dir(dir.join("modules"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "wasm") {
                let bytes = std::fs::read(&path)?;
                let hash = ModuleHash::of(&bytes);
                let meta = path.with_extension("json");
                let info = std::fs::read_to_string(&meta)
                    .ok()
                    .and_then(|t| serde_json::from_str::<ModuleInfo>(&t).ok())
                    .filter(|i| i.hash == hash)
                    .unwrap_or_else(|| ModuleInfo {
                        hash,
                        size: bytes.len() as u64,
                        uploaded_at: Utc::now(),
                        imports: Vec::new(),
                    });
                st.modules.insert(hash, (bytes, info));
            }
        }
        let tasks = dir.join("tasks.json");
        if tasks.exists() {
            let text = std::fs::read_to_string(&tasks)?;
            let (t, h): (
                HashMap<String, TaskBinding>,
                HashMap<String, Vec<TaskBinding>>,
            ) = serde_json::from_str(&text).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            st.tasks = t;
            st.history = h;
        }
        Ok(LocalRegistry {
            dir: Some(dir.to_path_buf()),
            state: Mutex::new(st),
            _lock: Some(lock),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LocalState> {
        // A panic while holding this lock cannot leave the maps half-updated
        // in a way that matters more than losing the registry would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save_tasks(&self, st: &LocalState) -> Result<(), RegistryError> {
        if let Some(dir) = &self.dir {
            let text = serde_json::to_string_pretty(&(&st.tasks, &st.history))
                .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            // A temporary file of its own, renamed into place: a save never
            // leaves `tasks.json` cut short, nor moves another's half-written
            // file.
            let tmp = dir.join(format!("tasks.json.{}.tmp", uuid::Uuid::now_v7().simple()));
            let saved = std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, dir.join("tasks.json")));
            if let Err(e) = saved {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn store_module(
        &self,
        bytes: &[u8],
        imports: Vec<String>,
    ) -> Result<(ModuleInfo, bool), RegistryError> {
        let hash = ModuleHash::of(bytes);
        let hex = hash.to_hex();
        if let Some(existing) = self.lock().modules.get(&hash) {
            return Ok((existing.1.clone(), false));
        }
        let info = ModuleInfo {
            hash,
            size: bytes.len() as u64,
            uploaded_at: Utc::now(),
            imports,
        };
        if let Some(dir) = &self.dir {
            let path = dir.join("modules").join(format!("{hex}.wasm"));
            let meta = serde_json::to_string_pretty(&info)
                .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            // Each store writes its own temporary files, renamed into place:
            // two stores of one module at once (two binds of a new module)
            // neither fail nor leave a file cut short.
            for (to, data) in [
                (&path, bytes),
                (&path.with_extension("json"), meta.as_bytes()),
            ] {
                let tmp = to.with_extension(format!("{}.tmp", uuid::Uuid::now_v7().simple()));
                std::fs::write(&tmp, data)?;
                std::fs::rename(&tmp, to)?;
            }
        }
        let mut st = self.lock();
        let entry = st
            .modules
            .entry(hash)
            .or_insert_with(|| (bytes.to_vec(), info.clone()));
        let created = entry.1 == info;
        Ok((entry.1.clone(), created))
    }

    async fn module_info(&self, hash: &ModuleHash) -> Result<Option<ModuleInfo>, RegistryError> {
        Ok(self.lock().modules.get(hash).map(|(_, i)| i.clone()))
    }

    async fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, RegistryError> {
        Ok(self.lock().modules.get(hash).map(|(b, _)| b.clone()))
    }

    async fn has_module(&self, hash: &ModuleHash) -> Result<bool, RegistryError> {
        Ok(self.lock().modules.contains_key(hash))
    }

    async fn modules(&self) -> Result<Vec<ModuleInfo>, RegistryError> {
        let mut out: Vec<ModuleInfo> = self
            .lock()
            .modules
            .values()
            .map(|(_, i)| i.clone())
            .collect();
        out.sort_by_key(|m| m.uploaded_at);
        Ok(out)
    }

    async fn bind(&self, binding: TaskBinding) -> Result<(), RegistryError> {
        let mut st = self.lock();
        let name = binding.name.clone();
        let history = st.history.get(&name).cloned();
        let prev = st.tasks.insert(name.clone(), binding);
        if let Some(prev) = &prev {
            let h = st.history.entry(name.clone()).or_default();
            h.insert(0, prev.clone());
            h.truncate(HISTORY_KEEP as usize);
        }
        if let Err(e) = self.save_tasks(&st) {
            // Not saved: memory goes back to what the directory holds (a
            // binding that ran until a restart, then vanished).
            match prev {
                Some(prev) => st.tasks.insert(name.clone(), prev),
                None => st.tasks.remove(&name),
            };
            match history {
                Some(h) => st.history.insert(name, h),
                None => st.history.remove(&name),
            };
            return Err(e);
        }
        Ok(())
    }

    async fn task(&self, name: &str) -> Result<Option<TaskBinding>, RegistryError> {
        Ok(self.lock().tasks.get(name).cloned())
    }

    async fn tasks(&self) -> Result<Vec<TaskBinding>, RegistryError> {
        let mut out: Vec<TaskBinding> = self.lock().tasks.values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn history(&self, name: &str) -> Result<Vec<TaskBinding>, RegistryError> {
        Ok(self.lock().history.get(name).cloned().unwrap_or_default())
    }
}
