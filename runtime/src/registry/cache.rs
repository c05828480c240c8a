//! The task bindings a process has read, kept while it hears every change.
//!
//! A producer resolves a job's task name to its binding (module, queue,
//! limits) on every enqueue: one `HGET` round trip before the enqueue
//! script, a seventh of a single job's round trip. [`BindingCache`] keeps
//! what was read, and [`RedisRegistry`](super::RedisRegistry) drops an
//! entry when any process re-binds that name: `bind` publishes the name on
//! `runner:tasks:changed` after storing the binding, and every cached
//! registry listens there. So a re-bind reaches every process as fast as
//! a pub/sub message, and the process that re-bound sees it at once.
//!
//! The cache is trusted only while the feed is up: it starts empty and
//! unused, fills once the subscription is confirmed, and is emptied (and
//! bypassed) whenever the feed drops, until it is back. A read that began
//! before a change was heard is not stored ([`BindingCache::epoch`]). An
//! entry is also read again after [`BINDING_CACHE_FOR`], which bounds how
//! long a feed that died without a word (no RST, before the PING that
//! finds it) could hide a re-bind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::TaskBinding;
use crate::queue::redis::{Liveness, RedisEndpoint, listen};

/// Where `bind` announces a re-bound name.
pub const TASKS_CHANNEL: &str = "runner:tasks:changed";

/// How long a cached binding is used before it is read again even though
/// no change was heard.
pub const BINDING_CACHE_FOR: Duration = Duration::from_secs(5);

/// Bounds the cache; past it the cache starts over.
const BINDING_CACHE_MAX: usize = 4096;

pub struct BindingCache {
    entries: Mutex<HashMap<String, (TaskBinding, Instant)>>,
    /// Bumped by every change heard and every (re)subscription.
    epoch: AtomicU64,
    /// Whether the change feed is subscribed.
    live: AtomicBool,
    max_age: Duration,
}

/// What a reader noted before it read Redis ([`BindingCache::before_read`]).
pub struct ReadTicket {
    epoch: u64,
    live: bool,
}

impl BindingCache {
    /// A cache fed by `runner:tasks:changed` on `endpoint`, kept at most
    /// `max_age` per entry. The feed runs until the cache is dropped.
    pub fn start(endpoint: RedisEndpoint, max_age: Duration) -> Arc<Self> {
        let cache = Arc::new(BindingCache {
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            max_age,
        });
        tokio::spawn(feed(endpoint, Arc::downgrade(&cache)));
        cache
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (TaskBinding, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached binding of `name`, if the feed is up and it is fresh.
    pub fn get(&self, name: &str) -> Option<TaskBinding> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.lock();
        let (binding, read_at) = entries.get(name)?;
        (read_at.elapsed() < self.max_age).then(|| binding.clone())
    }

    /// Call before reading `name` from Redis; hand the ticket to
    /// [`BindingCache::store`] with what was read.
    pub fn before_read(&self) -> ReadTicket {
        ReadTicket {
            epoch: self.epoch.load(Ordering::Acquire),
            live: self.live.load(Ordering::Acquire),
        }
    }

    /// Keeps `binding`, read after `ticket` was taken, unless a change was
    /// heard since or the feed was down.
    pub fn store(&self, ticket: ReadTicket, binding: &TaskBinding) {
        let mut entries = self.lock();
        // Checked under the lock that `forget` takes too.
        if !ticket.live
            || !self.live.load(Ordering::Acquire)
            || self.epoch.load(Ordering::Acquire) != ticket.epoch
        {
            return;
        }
        if entries.len() >= BINDING_CACHE_MAX {
            entries.clear();
        }
        entries.insert(binding.name.clone(), (binding.clone(), Instant::now()));
    }

    /// `name` changed: its entry goes, and reads in flight are not stored.
    pub fn forget(&self, name: &str) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(name);
    }

    /// Everything goes (the feed dropped or came back).
    fn reset(&self, live: bool) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
        self.live.store(live, Ordering::Release);
    }
}

/// Subscribes, marks the cache live, forgets each name announced; on a
/// lost connection empties the cache and subscribes again with backoff.
async fn feed(endpoint: RedisEndpoint, cache: Weak<BindingCache>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let mut ps = endpoint.pubsub().await?;
            ps.subscribe(TASKS_CHANNEL).await?;
            Ok::<_, redis::RedisError>(ps)
        }
        .await;
        match subscribed {
            Ok(ps) => {
                backoff = Duration::from_millis(100);
                match cache.upgrade() {
                    Some(c) => c.reset(true),
                    None => return,
                }
                let stopped = listen(
                    ps,
                    Liveness::default(),
                    || cache.strong_count() == 0,
                    |msg| match cache.upgrade() {
                        Some(c) => {
                            match msg.get_payload::<String>() {
                                Ok(name) => c.forget(&name),
                                // Which name is unknown: none is trusted.
                                Err(_) => c.reset(true),
                            }
                            true
                        }
                        None => false,
                    },
                )
                .await;
                match cache.upgrade() {
                    Some(c) => c.reset(false),
                    None => return,
                }
                if stopped {
                    return;
                }
                tracing::warn!("the task binding change feed lost Redis; resubscribing");
                metrics::counter!("runner_redis_reconnects_total", "connection" => "tasks")
                    .increment(1);
            }
            Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
        }
        if cache.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}
