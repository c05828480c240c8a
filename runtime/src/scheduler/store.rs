//! Where dynamic beats and fire records live, and how a change reaches every
//! running scheduler.
//!
//! - [`RedisBeatStore`]: shared by every replica on one Redis. Keys (none
//!   of them needs a hash tag: every command and script touches one key):
//!
//!   | key | type | holds |
//!   |---|---|---|
//!   | `runner:beats` | hash | beat name -> `{"beat": {..}, "updated_at": ..}` (beats created through the API or CLI) |
//!   | `runner:beats:fired` | hash | beat name -> the newest scheduled fire (due time, job id) |
//!   | `runner:beats:manual` | hash | beat name -> the newest manual fire (`fire_now`) |
//!   | `runner:beats:claims` | hash | beat name -> the newest claimed fire (due time, job id, queue): see [`BeatStore::claim_fire`] |
//!   | `runner:beats:changed` | pub/sub channel | the name of a beat that was put or deleted |
//!
//! - [`MemoryBeatStore`]: the same in this process, for the embedded broker.
//!
//! The store keeps what it is given; validation and the merge with
//! `runner.toml` belong to [`super::Scheduler`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};
use runner_host_fns::redis_conn::Counted;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::beat::Beat;
use crate::queue::JobId;
use crate::queue::redis::{Liveness, RedisEndpoint, RedisTls, listen};

pub const BEATS_KEY: &str = "runner:beats";
pub const FIRED_KEY: &str = "runner:beats:fired";
pub const MANUAL_KEY: &str = "runner:beats:manual";
pub const CLAIMS_KEY: &str = "runner:beats:claims";
pub const CHANGES_CHANNEL: &str = "runner:beats:changed";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt beat record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A dynamic beat as stored, with the time it was last put.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredBeat {
    pub beat: Beat,
    pub updated_at: DateTime<Utc>,
}

/// One fire of a beat: the due time it was for and the job it enqueued.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FireRecord {
    pub due: DateTime<Utc>,
    /// When the job was enqueued.
    pub fired_at: DateTime<Utc>,
    pub job: JobId,
    pub queue: String,
}

/// The stored form: `due_ms` lets the record script compare without
/// parsing dates.
#[derive(Serialize, Deserialize)]
struct WireFire {
    due_ms: i64,
    #[serde(flatten)]
    record: FireRecord,
}

/// What a watcher hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeatChange {
    /// The beat of this name was put or deleted.
    Changed(String),
    /// The change feed was re-established: changes may have been missed,
    /// read everything again.
    Resync,
}

#[async_trait]
pub trait BeatStore: Send + Sync + 'static {
    /// `"redis"` or `"memory"`.
    fn kind(&self) -> &'static str;

    /// Every dynamic beat.
    async fn beats(&self) -> StoreResult<Vec<StoredBeat>>;

    /// Stores (or replaces) a beat and announces it.
    async fn put(&self, beat: &StoredBeat) -> StoreResult<()>;

    /// Stores `beat` (and announces it) only if the beat of that name
    /// stored now is `previous` (`None`: none is), as its `updated_at`
    /// tells (every put sets it): says whether it did. A read, a change
    /// and this write lose no write made in between.
    async fn replace(&self, previous: Option<&StoredBeat>, beat: &StoredBeat) -> StoreResult<bool>;

    /// Removes a beat and announces it; with `forget_fires`, its fire
    /// records too. Returns whether it existed.
    async fn delete(&self, name: &str, forget_fires: bool) -> StoreResult<bool>;

    /// Change announcements from now on (the subscription is live when this
    /// returns). The feed ends only when the receiver is dropped.
    async fn watch(&self) -> StoreResult<mpsc::UnboundedReceiver<BeatChange>>;

    /// The newest scheduled (`manual = false`) or manual fire of every beat.
    async fn fires(&self, manual: bool) -> StoreResult<HashMap<String, FireRecord>>;

    /// The latest claim ([`Self::claim_fire`]) of every beat.
    async fn claims(&self) -> StoreResult<HashMap<String, FireRecord>>;

    /// Records a fire. A scheduled fire replaces the stored one only if its
    /// due time is later (replicas may record out of order).
    async fn record_fire(&self, name: &str, record: &FireRecord, manual: bool) -> StoreResult<()>;

    /// Claims the fire of beat `name` at `claim.due` for job `claim.job`
    /// on `claim.queue`, in one atomic step: the claim is taken unless one
    /// for this due time or a later one is held, which is then returned
    /// (`None`: taken). A claim depends on nothing but the beat's name and
    /// the due time: not on the job's queue, nor on its record still
    /// existing.
    async fn claim_fire(&self, name: &str, claim: &FireRecord) -> StoreResult<Option<FireRecord>>;
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// A time as `encode` writes it in a record (without the quotes).
fn stamp(t: &DateTime<Utc>) -> String {
    encode(t).trim_matches('"').to_string()
}

fn encode<T: Serialize>(v: &T) -> String {
    // Plain structs of strings, numbers and JSON values always serialize.
    serde_json::to_string(v).unwrap_or_default()
}

/// Replaces a beat if it is still the one read, by its `updated_at`
/// (`''`: none was stored), and announces it: 1 if replaced, 0 if it had
/// changed (or cannot be read).
const REPLACE: &str = r#"#!lua
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if cur then return 0 end
else
  if not cur then return 0 end
  local ok, rec = pcall(cjson.decode, cur)
  if not ok or type(rec) ~= 'table' or rec.updated_at ~= ARGV[2] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
"#;

/// Keeps the record with the later due time (fires and claims): returns
/// the record kept when it is not the new one, else nil.
const KEEP_LATER: &str = r#"#!lua
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, rec = pcall(cjson.decode, cur)
  if ok and type(rec) == 'table' and tonumber(rec.due_ms) and tonumber(rec.due_ms) >= tonumber(ARGV[2]) then
    return cur
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return false
"#;

/// Beats in Redis, shared by every replica.
#[derive(Clone)]
pub struct RedisBeatStore {
    client: RedisEndpoint,
    conn: Counted,
    keep_later: Script,
    replace: Script,
}

impl RedisBeatStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, &RedisTls::default()).await
    }

    /// [`connect`](Self::connect) with the TLS files `tls`.
    pub async fn connect_with(url: &str, tls: &RedisTls) -> StoreResult<Self> {
        let client = RedisEndpoint::open(url, tls)?;
        let conn = client.connect().await?;
        let keep_later = Script::new(KEEP_LATER);
        let replace = Script::new(REPLACE);
        Ok(RedisBeatStore {
            client,
            conn: conn.with_scripts([("beat_keep_later", &keep_later), ("beat_replace", &replace)]),
            keep_later,
            replace,
        })
    }

    async fn subscribe(client: &RedisEndpoint) -> StoreResult<redis::aio::PubSub> {
        let mut pubsub = client.pubsub().await?;
        pubsub.subscribe(CHANGES_CHANNEL).await?;
        Ok(pubsub)
    }
}

#[async_trait]
impl BeatStore for RedisBeatStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn beats(&self) -> StoreResult<Vec<StoredBeat>> {
        let all: HashMap<String, String> = self.conn.clone().hgetall(BEATS_KEY).await?;
        let mut out = Vec::with_capacity(all.len());
        for (name, text) in all {
            match decode::<StoredBeat>(&format!("{BEATS_KEY}[{name}]"), &text) {
                Ok(b) => out.push(b),
                // One bad record must not hide every other beat.
                Err(e) => tracing::warn!("skipping beat {name:?}: {e}"),
            }
        }
        out.sort_by(|a, b| a.beat.name.cmp(&b.beat.name));
        Ok(out)
    }

    async fn put(&self, beat: &StoredBeat) -> StoreResult<()> {
        redis::pipe()
            .atomic()
            .hset(BEATS_KEY, &beat.beat.name, encode(beat))
            .ignore()
            .publish(CHANGES_CHANNEL, &beat.beat.name)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn replace(&self, previous: Option<&StoredBeat>, beat: &StoredBeat) -> StoreResult<bool> {
        let replaced: i64 = self
            .replace
            .key(BEATS_KEY)
            .arg(&beat.beat.name)
            .arg(previous.map(|p| stamp(&p.updated_at)).unwrap_or_default())
            .arg(encode(beat))
            .arg(CHANGES_CHANNEL)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(replaced == 1)
    }

    async fn delete(&self, name: &str, forget_fires: bool) -> StoreResult<bool> {
        let mut pipe = redis::pipe();
        pipe.atomic().hdel(BEATS_KEY, name);
        if forget_fires {
            pipe.hdel(FIRED_KEY, name)
                .ignore()
                .hdel(MANUAL_KEY, name)
                .ignore()
                .hdel(CLAIMS_KEY, name)
                .ignore();
        }
        pipe.publish(CHANGES_CHANNEL, name).ignore();
        let (removed,): (u32,) = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(removed > 0)
    }

    async fn watch(&self) -> StoreResult<mpsc::UnboundedReceiver<BeatChange>> {
        let first = Self::subscribe(&self.client).await?;
        let client = self.client.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut pubsub = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Some(ps) = pubsub.take() {
                    let stopped = listen(
                        ps,
                        Liveness::default(),
                        || tx.is_closed(),
                        |m| {
                            let name = m.get_payload::<String>().unwrap_or_default();
                            tx.send(BeatChange::Changed(name)).is_ok()
                        },
                    )
                    .await;
                    if stopped {
                        return;
                    }
                    tracing::warn!("beat change feed lost; reconnecting");
                    metrics::counter!("runner_redis_reconnects_total", "connection" => "beats")
                        .increment(1);
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match Self::subscribe(&client).await {
                    Ok(ps) => {
                        pubsub = Some(ps);
                        backoff = Duration::from_millis(100);
                        tracing::info!("beat change feed re-established");
                        if tx.send(BeatChange::Resync).is_err() {
                            return;
                        }
                    }
                    Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                }
            }
        });
        Ok(rx)
    }

    async fn fires(&self, manual: bool) -> StoreResult<HashMap<String, FireRecord>> {
        self.records(if manual { MANUAL_KEY } else { FIRED_KEY })
            .await
    }

    async fn claims(&self) -> StoreResult<HashMap<String, FireRecord>> {
        self.records(CLAIMS_KEY).await
    }

    async fn record_fire(&self, name: &str, record: &FireRecord, manual: bool) -> StoreResult<()> {
        if manual {
            let wire = encode(&WireFire {
                due_ms: record.due.timestamp_millis(),
                record: record.clone(),
            });
            let _: () = self.conn.clone().hset(MANUAL_KEY, name, wire).await?;
        } else {
            self.keep_later(FIRED_KEY, name, record).await?;
        }
        Ok(())
    }

    async fn claim_fire(&self, name: &str, claim: &FireRecord) -> StoreResult<Option<FireRecord>> {
        self.keep_later(CLAIMS_KEY, name, claim).await
    }
}

impl RedisBeatStore {
    /// Every beat's fire record (or claim) in hash `key`; one this build
    /// cannot read is left out (logged).
    async fn records(&self, key: &str) -> StoreResult<HashMap<String, FireRecord>> {
        let all: HashMap<String, String> = self.conn.clone().hgetall(key).await?;
        let mut out = HashMap::with_capacity(all.len());
        for (name, text) in all {
            match decode::<WireFire>(&format!("{key}[{name}]"), &text) {
                Ok(w) => {
                    out.insert(name, w.record);
                }
                Err(e) => tracing::warn!("ignoring fire record of {name:?}: {e}"),
            }
        }
        Ok(out)
    }

    /// Stores `record` under `name` in hash `key` unless the stored one is
    /// as late or later, which is returned.
    async fn keep_later(
        &self,
        key: &str,
        name: &str,
        record: &FireRecord,
    ) -> StoreResult<Option<FireRecord>> {
        let wire = encode(&WireFire {
            due_ms: record.due.timestamp_millis(),
            record: record.clone(),
        });
        let kept: Option<String> = self
            .keep_later
            .key(key)
            .arg(name)
            .arg(record.due.timestamp_millis())
            .arg(wire)
            .invoke_async(&mut self.conn.clone())
            .await?;
        kept.map(|text| decode::<WireFire>(&format!("{key}[{name}]"), &text).map(|w| w.record))
            .transpose()
    }
}

#[derive(Default)]
struct MemoryState {
    beats: HashMap<String, StoredBeat>,
    fired: HashMap<String, FireRecord>,
    manual: HashMap<String, FireRecord>,
    claims: HashMap<String, FireRecord>,
    watchers: Vec<mpsc::UnboundedSender<BeatChange>>,
}

/// Beats in this process (embedded broker): lost when it exits.
#[derive(Default)]
pub struct MemoryBeatStore {
    state: Mutex<MemoryState>,
}

impl MemoryBeatStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // Every update is a single insert or remove: a panic elsewhere
        // cannot leave the maps half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn announce(st: &mut MemoryState, name: &str) {
        st.watchers
            .retain(|w| w.send(BeatChange::Changed(name.to_string())).is_ok());
    }
}

#[async_trait]
impl BeatStore for MemoryBeatStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn beats(&self) -> StoreResult<Vec<StoredBeat>> {
        let mut out: Vec<StoredBeat> = self.lock().beats.values().cloned().collect();
        out.sort_by(|a, b| a.beat.name.cmp(&b.beat.name));
        Ok(out)
    }

    async fn put(&self, beat: &StoredBeat) -> StoreResult<()> {
        let mut st = self.lock();
        st.beats.insert(beat.beat.name.clone(), beat.clone());
        Self::announce(&mut st, &beat.beat.name);
        Ok(())
    }

    async fn replace(&self, previous: Option<&StoredBeat>, beat: &StoredBeat) -> StoreResult<bool> {
        let mut st = self.lock();
        let now = st.beats.get(&beat.beat.name).map(|b| b.updated_at);
        if now != previous.map(|p| p.updated_at) {
            return Ok(false);
        }
        st.beats.insert(beat.beat.name.clone(), beat.clone());
        Self::announce(&mut st, &beat.beat.name);
        Ok(true)
    }

    async fn delete(&self, name: &str, forget_fires: bool) -> StoreResult<bool> {
        let mut st = self.lock();
        let existed = st.beats.remove(name).is_some();
        if forget_fires {
            st.fired.remove(name);
            st.manual.remove(name);
            st.claims.remove(name);
        }
        Self::announce(&mut st, name);
        Ok(existed)
    }

    async fn watch(&self) -> StoreResult<mpsc::UnboundedReceiver<BeatChange>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().watchers.push(tx);
        Ok(rx)
    }

    async fn fires(&self, manual: bool) -> StoreResult<HashMap<String, FireRecord>> {
        let st = self.lock();
        Ok(if manual {
            st.manual.clone()
        } else {
            st.fired.clone()
        })
    }

    async fn claims(&self) -> StoreResult<HashMap<String, FireRecord>> {
        Ok(self.lock().claims.clone())
    }

    async fn record_fire(&self, name: &str, record: &FireRecord, manual: bool) -> StoreResult<()> {
        let mut st = self.lock();
        let map = if manual {
            &mut st.manual
        } else {
            &mut st.fired
        };
        let newer = manual || map.get(name).is_none_or(|cur| cur.due < record.due);
        if newer {
            map.insert(name.to_string(), record.clone());
        }
        Ok(())
    }

    async fn claim_fire(&self, name: &str, claim: &FireRecord) -> StoreResult<Option<FireRecord>> {
        let mut st = self.lock();
        match st.claims.get(name) {
            Some(cur) if cur.due >= claim.due => Ok(Some(cur.clone())),
            _ => {
                st.claims.insert(name.to_string(), claim.clone());
                Ok(None)
            }
        }
    }
}
