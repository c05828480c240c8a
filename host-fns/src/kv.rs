//! The small key-value store tasks use for guards like "already reminded
//! today" (`set_nx("remind:42:2026-11-22", .., 24 h)`).
//!
//! Keys are namespaced per task name: two tasks never see each other's
//! keys. Each namespace has a quota ([`KvQuota`]: number of keys and bytes,
//! counting key plus value) from the task's grant; a write that would exceed
//! it fails with `permanent`. Expired keys stop counting against the quota.
//!
//! Whatever the quota, a key has at most [`MAX_KEY_BYTES`] (512) bytes, a
//! value at most [`MAX_VALUE_BYTES`] (1 MiB), and a TTL at most [`MAX_TTL`]
//! (ten years); more is `invalid`. The store is for small guards and
//! markers; a grant with a large byte quota must not let one value grow
//! without bound (a Redis string takes up to 512 MB).
//!
//! [`KvService`] validates arguments and traces calls; the storage is a
//! [`KvStore`]: [`MemoryKv`] for the embedded broker, [`RedisKv`] next to the
//! Redis broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::HostError;
use crate::trace::traced;

const CAPABILITY: &str = "kv";

/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// The largest value accepted, in bytes (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The longest TTL accepted (ten years): longer is a bug in the task.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// A task's share of the store, from its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvQuota {
    /// Live keys at most.
    pub max_keys: u64,
    /// Bytes of keys plus values at most.
    pub max_bytes: u64,
}

impl Default for KvQuota {
    fn default() -> Self {
        Self {
            max_keys: 10_000,
            max_bytes: 10 * 1024 * 1024,
        }
    }
}

/// The outcome of a write at the store level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Stored,
    /// `only_if_absent` and the key exists.
    Exists,
    KeyQuotaExceeded,
    ByteQuotaExceeded,
}

/// Storage behind [`KvService`]. Implementations keep namespaces apart,
/// honour TTLs, and check the quota atomically with the write.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Stores `value` under `key` in namespace `ns` (only if absent when
    /// `only_if_absent`), replacing any TTL with `ttl`.
    async fn set(
        &self,
        ns: &str,
        quota: &KvQuota,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<SetOutcome, HostError>;

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, HostError>;

    /// Returns whether the key existed.
    async fn delete(&self, ns: &str, key: &str) -> Result<bool, HostError>;
}

/// The kv capability: argument checks, quota errors and tracing in front
/// of a [`KvStore`].
#[derive(Clone)]
pub struct KvService {
    store: Arc<dyn KvStore>,
}

impl KvService {
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        Self { store }
    }

    /// An in-memory service (the embedded broker's).
    pub fn in_memory() -> Self {
        Self::new(Arc::new(MemoryKv::default()))
    }

    /// Stores the value only if the key does not exist; true if stored.
    pub async fn set_nx(
        &self,
        task: &str,
        quota: &KvQuota,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, HostError> {
        traced(CAPABILITY, "set_nx", async {
            let ttl = check(task, key, ttl_ms)?;
            check_value(value)?;
            match self.store.set(task, quota, key, value, ttl, true).await? {
                SetOutcome::Stored => Ok(true),
                SetOutcome::Exists => Ok(false),
                other => Err(quota_error(other, quota)),
            }
        })
        .await
    }

    /// Stores the value, replacing any previous value and TTL.
    pub async fn set(
        &self,
        task: &str,
        quota: &KvQuota,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<(), HostError> {
        traced(CAPABILITY, "set", async {
            let ttl = check(task, key, ttl_ms)?;
            check_value(value)?;
            match self.store.set(task, quota, key, value, ttl, false).await? {
                SetOutcome::Stored | SetOutcome::Exists => Ok(()),
                other => Err(quota_error(other, quota)),
            }
        })
        .await
    }

    pub async fn get(&self, task: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        traced(CAPABILITY, "get", async {
            check(task, key, None)?;
            self.store.get(task, key).await
        })
        .await
    }

    /// Deletes the key; true if it existed.
    pub async fn delete(&self, task: &str, key: &str) -> Result<bool, HostError> {
        traced(CAPABILITY, "delete", async {
            check(task, key, None)?;
            self.store.delete(task, key).await
        })
        .await
    }
}

fn check(task: &str, key: &str, ttl_ms: Option<u64>) -> Result<Option<Duration>, HostError> {
    if task.is_empty() {
        // A run by hash has no task name, hence no namespace of its own.
        return Err(HostError::denied(
            "kv needs a task name to namespace keys; this job has none",
        ));
    }
    if key.is_empty() {
        return Err(HostError::invalid("empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(HostError::invalid(format!(
            "key of {} bytes is longer than {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    match ttl_ms {
        None => Ok(None),
        Some(0) => Err(HostError::invalid("ttl must be at least 1 ms")),
        Some(ms) => {
            let ttl = Duration::from_millis(ms);
            if ttl > MAX_TTL {
                return Err(HostError::invalid(format!(
                    "ttl of {ms} ms is longer than ten years"
                )));
            }
            Ok(Some(ttl))
        }
    }
}

fn check_value(value: &[u8]) -> Result<(), HostError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(HostError::invalid(format!(
            "value of {} bytes is larger than {MAX_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

fn quota_error(outcome: SetOutcome, quota: &KvQuota) -> HostError {
    match outcome {
        SetOutcome::KeyQuotaExceeded => HostError::permanent(format!(
            "kv quota exceeded: this task may keep at most {} keys",
            quota.max_keys
        )),
        _ => HostError::permanent(format!(
            "kv quota exceeded: this task may keep at most {} bytes of keys and values",
            quota.max_bytes
        )),
    }
}

fn entry_bytes(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// In-process store; expired keys are dropped lazily, on the next access to
/// their namespace.
#[derive(Default)]
pub struct MemoryKv {
    namespaces: Mutex<HashMap<String, Namespace>>,
}

#[derive(Default)]
struct Namespace {
    entries: HashMap<String, (Vec<u8>, Option<Instant>)>,
    bytes: u64,
}

impl Namespace {
    fn purge(&mut self, now: Instant) {
        let mut freed = 0;
        self.entries.retain(|k, (v, expires)| {
            let live = expires.is_none_or(|at| at > now);
            if !live {
                freed += entry_bytes(k, v);
            }
            live
        });
        self.bytes -= freed;
    }
}

impl MemoryKv {
    fn with_ns<T>(&self, ns: &str, f: impl FnOnce(&mut Namespace) -> T) -> Result<T, HostError> {
        let mut all = self
            .namespaces
            .lock()
            .map_err(|_| HostError::transient("kv store lock poisoned"))?;
        let space = all.entry(ns.to_owned()).or_default();
        space.purge(Instant::now());
        Ok(f(space))
    }
}

#[async_trait]
impl KvStore for MemoryKv {
    async fn set(
        &self,
        ns: &str,
        quota: &KvQuota,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<SetOutcome, HostError> {
        self.with_ns(ns, |space| {
            let old = space.entries.get(key).map(|(v, _)| entry_bytes(key, v));
            if only_if_absent && old.is_some() {
                return SetOutcome::Exists;
            }
            if old.is_none() && space.entries.len() as u64 >= quota.max_keys {
                return SetOutcome::KeyQuotaExceeded;
            }
            let new = entry_bytes(key, value);
            if space.bytes - old.unwrap_or(0) + new > quota.max_bytes {
                return SetOutcome::ByteQuotaExceeded;
            }
            let expires = ttl.map(|t| Instant::now() + t);
            space
                .entries
                .insert(key.to_owned(), (value.to_vec(), expires));
            space.bytes = space.bytes - old.unwrap_or(0) + new;
            SetOutcome::Stored
        })
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.with_ns(ns, |space| space.entries.get(key).map(|(v, _)| v.clone()))
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, HostError> {
        self.with_ns(ns, |space| match space.entries.remove(key) {
            Some((v, _)) => {
                space.bytes -= entry_bytes(key, &v);
                true
            }
            None => false,
        })
    }
}

/// Redis-backed store.
///
/// Layout, for task `T` under prefix `P` (default `runner:kv`); every key of
/// a namespace shares the hash tag `{T}`, so one namespace lives in one
/// Cluster slot and the scripts may touch all of it:
/// - `P:{T}:k:<key>`: the value, with a real Redis TTL (`PX`);
/// - `P:{T}:idx`: sorted set of live keys scored by expiry in ms (`+inf`
///   without TTL): its cardinality is the key count;
/// - `P:{T}:sizes`: hash key -> bytes charged; `P:{T}:bytes`: their sum.
///
/// Writes and deletes are Lua scripts that first drop index entries whose
/// expiry has passed (by the server's clock, the same clock that expires
/// the values), then check the quota and write, atomically.
pub struct RedisKv {
    conn: crate::redis_conn::Counted,
    prefix: String,
    set_script: redis::Script,
    delete_script: redis::Script,
}

const LUA_PURGE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The values of the entries it drops expire by their own TTL (set with
-- the same server clock as their scores): a script touches only the keys
-- it declares, and it cannot declare those it finds here.
local function purge(idx, sizes, bytes, now)
  local expired = redis.call('ZRANGEBYSCORE', idx, '-inf', now)
  for _, k in ipairs(expired) do
    local sz = redis.call('HGET', sizes, k)
    if sz then
      redis.call('HDEL', sizes, k)
      redis.call('DECRBY', bytes, sz)
    end
    redis.call('ZREM', idx, k)
  end
end
"#;

// KEYS: idx, sizes, bytes, data key. ARGV: key, value, ttl ms (0 = none),
// only-if-absent (1/0), max keys, max bytes.
const LUA_SET: &str = r#"
local idx, sizes, bytes, data = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local key, value = ARGV[1], ARGV[2]
local ttl, nx = tonumber(ARGV[3]), ARGV[4] == '1'
local max_keys, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
purge(idx, sizes, bytes, now)
local exists = redis.call('ZSCORE', idx, key)
if nx and exists then return 0 end
if not exists and redis.call('ZCARD', idx) >= max_keys then return -1 end
local old = tonumber(redis.call('HGET', sizes, key) or '0')
local new = string.len(key) + string.len(value)
local total = tonumber(redis.call('GET', bytes) or '0')
if total - old + new > max_bytes then return -2 end
if ttl > 0 then
  redis.call('SET', data, value, 'PX', ttl)
  redis.call('ZADD', idx, now + ttl, key)
else
  redis.call('SET', data, value)
  redis.call('ZADD', idx, '+inf', key)
end
redis.call('HSET', sizes, key, new)
redis.call('INCRBY', bytes, new - old)
return 1
"#;

// KEYS: idx, sizes, bytes, data key. ARGV: key.
const LUA_DELETE: &str = r#"
local idx, sizes, bytes, data = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local key = ARGV[1]
purge(idx, sizes, bytes, now_ms())
local existed = redis.call('DEL', data)
local sz = redis.call('HGET', sizes, key)
if sz then
  redis.call('HDEL', sizes, key)
  redis.call('DECRBY', bytes, sz)
end
redis.call('ZREM', idx, key)
return existed
"#;

struct NsKeys {
    idx: String,
    sizes: String,
    bytes: String,
    data_prefix: String,
}

impl RedisKv {
    /// Connects to `url` (a `redis://` or `rediss://` URL) with a
    /// reconnecting connection manager.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        Self::open(redis::Client::open(url)?, prefix).await
    }

    /// A store on `client` (opened by the caller: TLS files, TCP settings).
    pub async fn open(client: redis::Client, prefix: &str) -> anyhow::Result<Self> {
        let conn = client.get_connection_manager().await?;
        Ok(Self::new(conn, prefix))
    }

    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self::on(crate::redis_conn::Counted::new(conn), prefix)
    }

    /// A store on an open connection (a single server or a cluster: every
    /// script of a namespace touches keys of its one slot, `{ns}`).
    pub fn on(conn: crate::redis_conn::Counted, prefix: &str) -> Self {
        Self::with_prelude(conn, prefix, "")
    }

    /// This store with scripts that refuse to touch a key they did not
    /// declare ([`STRICT_KEYS_LUA`](crate::redis_conn::STRICT_KEYS_LUA)):
    /// for tests.
    pub fn with_strict_keys(self) -> Self {
        Self::with_prelude(self.conn, &self.prefix, crate::redis_conn::STRICT_KEYS_LUA)
    }

    fn with_prelude(conn: crate::redis_conn::Counted, prefix: &str, prelude: &str) -> Self {
        // The shebang makes a cluster refuse a key outside the namespace's
        // slot (see the broker's scripts).
        let script =
            |body: &str| redis::Script::new(&format!("#!lua\n{prelude}\n{LUA_PURGE}{body}"));
        let set_script = script(LUA_SET);
        let delete_script = script(LUA_DELETE);
        Self {
            conn: conn.with_scripts([("kv_set", &set_script), ("kv_delete", &delete_script)]),
            prefix: prefix.to_owned(),
            set_script,
            delete_script,
        }
    }

    fn keys(&self, ns: &str) -> NsKeys {
        let base = format!("{}:{{{ns}}}", self.prefix);
        NsKeys {
            idx: format!("{base}:idx"),
            sizes: format!("{base}:sizes"),
            bytes: format!("{base}:bytes"),
            data_prefix: format!("{base}:k:"),
        }
    }
}

fn redis_error(e: redis::RedisError) -> HostError {
    HostError::transient(format!("kv store (redis): {e}"))
}

#[async_trait]
impl KvStore for RedisKv {
    async fn set(
        &self,
        ns: &str,
        quota: &KvQuota,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<SetOutcome, HostError> {
        let k = self.keys(ns);
        let ttl_ms = ttl.map(|t| t.as_millis().max(1) as u64).unwrap_or(0);
        let mut conn = self.conn.clone();
        let code: i64 = self
            .set_script
            .key(&k.idx)
            .key(&k.sizes)
            .key(&k.bytes)
            .key(format!("{}{key}", k.data_prefix))
            .arg(key)
            .arg(value)
            .arg(ttl_ms)
            .arg(if only_if_absent { 1 } else { 0 })
            .arg(quota.max_keys)
            .arg(quota.max_bytes)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(match code {
            1 => SetOutcome::Stored,
            0 => SetOutcome::Exists,
            -1 => SetOutcome::KeyQuotaExceeded,
            _ => SetOutcome::ByteQuotaExceeded,
        })
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        let k = self.keys(ns);
        let mut conn = self.conn.clone();
        redis::cmd("GET")
            .arg(format!("{}{key}", k.data_prefix))
            .query_async(&mut conn)
            .await
            .map_err(redis_error)
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, HostError> {
        let k = self.keys(ns);
        let mut conn = self.conn.clone();
        let existed: i64 = self
            .delete_script
            .key(&k.idx)
            .key(&k.sizes)
            .key(&k.bytes)
            .key(format!("{}{key}", k.data_prefix))
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(existed == 1)
    }
}
