//! Sharded pub/sub on a Redis Cluster. A queue's events are published
//! with `SPUBLISH` on a channel in the queue's own slot (`runner:{q}:ev`)
//! and heard with `SSUBSCRIBE` on the master of that slot: they stay on
//! their shard instead of crossing the whole cluster's bus, so the cost of
//! events grows with the shards that carry them, not with the cluster.
//!
//! A [`ShardFeed`] is one cluster connection (RESP3: messages share the
//! connections with replies) subscribed to shard channels and, beside them,
//! to a few classic ones (control, workflows), each routed to the master of
//! its slot. The redis crate subscribes a node's channels again when it
//! reconnects to that node and after it refreshes its slot map; what it
//! does not do, the feed does:
//! - **A master that died.** Its connection's end is reported (a
//!   `Disconnection` message), but nothing refreshes the slot map until a
//!   command fails. The feed subscribes every channel again: those of the
//!   dead master's slots fail over to whoever serves them now (the client
//!   follows `MOVED` and refreshes its map on the way).
//! - **A slot that moved** (resharding): its old node says `sunsubscribe`,
//!   and the client forgets the channel. The feed subscribes it again,
//!   which reaches the slot's new owner.
//! - **A connection that went silent.** Every `Liveness::every`, the feed
//!   subscribes its channels again (each is confirmed; a channel already
//!   subscribed stays as it was), within `Liveness::timeout`.
//! - **A channel it never heard of.** A feed given a [`Discover`] set
//!   (the hub: the set of queues) reads it at each of those checks and
//!   after each recovery, and subscribes the channels of members it does
//!   not have: a queue whose announcement it missed (the announcement
//!   came while it was cut off, or was never sent because the process
//!   that made the queue failed to), or whose subscription failed.
//!
//! Whatever was published while a channel was not subscribed is lost: the
//! listener is told once the channels are back (`on_recovered`), as after
//! a classic subscription's reconnect, and once a channel was found.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use super::endpoint::ShardSeeds;
use super::redis::Liveness;

/// One cluster connection's subscriptions and the messages they bring.
pub(crate) struct ShardFeed {
    channels: ShardChannels,
    rx: mpsc::UnboundedReceiver<PushInfo>,
}

/// What a feed is subscribed to, and the connection to subscribe more
/// through (shared with the feed's listener).
#[derive(Clone)]
pub(crate) struct ShardChannels {
    conn: ClusterConnection,
    shard: Arc<Mutex<BTreeSet<String>>>,
    classic: Arc<Vec<String>>,
    discover: Option<Discover>,
}

/// A set whose members each need a shard channel: its key, and the
/// channel of a member.
#[derive(Clone)]
pub(crate) struct Discover {
    pub(crate) set: &'static str,
    pub(crate) channel: fn(&str) -> String,
}

impl ShardChannels {
    /// Subscribes the shard channels of `channels` that are not yet (one
    /// `SSUBSCRIBE` each, at once: a command names one slot).
    pub(crate) async fn ensure(&self, channels: &[String]) -> RedisResult<()> {
        let missing: Vec<String> = {
            let have = self.shard.lock().unwrap_or_else(|e| e.into_inner());
            channels
                .iter()
                .filter(|c| !have.contains(*c))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        self.ssubscribe(&missing).await?;
        self.shard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(missing);
        Ok(())
    }

    async fn ssubscribe(&self, channels: &[String]) -> RedisResult<()> {
        futures::future::try_join_all(channels.iter().map(|c| {
            let mut conn = self.conn.clone();
            async move { conn.ssubscribe(c).await }
        }))
        .await?;
        Ok(())
    }

    /// Subscribes every channel again, and (if `discover`) those of
    /// members of the [`Discover`] set it did not have: whether there were
    /// any.
    async fn all(&self, discover: bool) -> RedisResult<bool> {
        let found = match self.discover.as_ref().filter(|_| discover) {
            Some(d) => {
                let members: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(d.set)
                    .query_async(&mut self.conn.clone())
                    .await?;
                let have = self.shard.lock().unwrap_or_else(|e| e.into_inner());
                let found: Vec<String> = members
                    .iter()
                    .map(|m| (d.channel)(m))
                    .filter(|c| !have.contains(c))
                    .collect();
                drop(have);
                if !found.is_empty() {
                    tracing::warn!(channels = ?found, "the event feed had not heard of these queues; subscribing");
                }
                found
            }
            None => Vec::new(),
        };
        let shard: Vec<String> = self
            .shard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .chain(&found)
            .cloned()
            .collect();
        self.ssubscribe(&shard).await?;
        futures::future::try_join_all(self.classic.iter().map(|c| {
            let mut conn = self.conn.clone();
            async move { conn.subscribe(c).await }
        }))
        .await?;
        let any = !found.is_empty();
        self.shard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(found);
        Ok(any)
    }

    /// Until every channel is subscribed again (tries each within
    /// `live.timeout`, backing off between tries).
    async fn recover(self, live: Liveness) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(live.timeout, self.all(true)).await {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

impl ShardFeed {
    /// A feed subscribed to the shard channels `shard` and the classic
    /// channels `classic`, and later to those `discover` finds; an error
    /// if one of them cannot be subscribed (e.g. a server before Redis 7,
    /// which has no sharded pub/sub).
    pub(crate) async fn open(
        seeds: &ShardSeeds,
        shard: Vec<String>,
        classic: Vec<String>,
        discover: Option<Discover>,
    ) -> RedisResult<Self> {
        let explain = |e: redis::RedisError| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "subscribing to a queue's shard channel failed (sharded pub/sub needs Redis 7 \
                 and the runner's ACL, with +ssubscribe +spublish; end the cluster URL \
                 with ?pubsub=classic for classic pub/sub)",
                e.to_string(),
            ))
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = seeds
            .client(tx)?
            .get_async_connection()
            .await
            .map_err(explain)?;
        let channels = ShardChannels {
            conn,
            shard: Arc::new(Mutex::new(shard.into_iter().collect())),
            classic: Arc::new(classic),
            discover,
        };
        channels.all(false).await.map_err(explain)?;
        Ok(ShardFeed { channels, rx })
    }

    /// Its channels, to subscribe more while it is listened to.
    pub(crate) fn channels(&self) -> ShardChannels {
        self.channels.clone()
    }

    /// Hands each message (channel, payload) to `on` until `on` returns
    /// false, `stop` completes, or `closed()` says the listener is gone
    /// (asked every `live.every` and when a channel is lost); returns true
    /// then. Channels lost on the way are subscribed again, then
    /// `on_recovered` is called (false: stop); so it is after channels
    /// were found ([`Discover`]). Returns false if the
    /// connection itself ended (open a new feed). The connection closes
    /// when this returns.
    pub(crate) async fn listen(
        mut self,
        live: Liveness,
        stop: impl Future<Output = ()>,
        closed: impl Fn() -> bool,
        mut on: impl FnMut(&str, &str) -> bool,
        mut on_recovered: impl FnMut() -> bool,
    ) -> bool {
        let mut stop = std::pin::pin!(stop);
        let mut recovering: Option<BoxFuture<'static, ()>> = None;
        // A channel lost while a recovery ran: recover once more after it.
        let mut again = false;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + live.every, live.every);
        loop {
            let lost = tokio::select! {
                () = &mut stop => return true,
                push = self.rx.recv() => {
                    let Some(push) = push else { return false };
                    match push.kind {
                        PushKind::Message | PushKind::SMessage => {
                            if let [channel, payload] = &push.data[..]
                                && let (Some(c), Some(p)) = (text(channel), text(payload))
                                && !on(&c, &p)
                            {
                                return true;
                            }
                            false
                        }
                        // The feed never unsubscribes: the server dropped
                        // the channel (its slot moved), or a node is gone.
                        PushKind::Disconnection | PushKind::SUnsubscribe | PushKind::Unsubscribe => true,
                        _ => false,
                    }
                }
                () = async { recovering.as_mut().expect("guarded").await }, if recovering.is_some() => {
                    recovering = None;
                    if !on_recovered() {
                        return true;
                    }
                    std::mem::take(&mut again)
                }
                _ = tick.tick() => {
                    if closed() {
                        return true;
                    }
                    if recovering.is_some() {
                        false
                    } else {
                        match tokio::time::timeout(live.timeout, self.channels.all(true)).await {
                            // A channel found: whatever it carried before is lost.
                            Ok(Ok(true)) => {
                                if !on_recovered() {
                                    return true;
                                }
                                false
                            }
                            Ok(Ok(false)) => false,
                            _ => true,
                        }
                    }
                }
            };
            if lost {
                // Nobody listens (a process shutting down, its Redis with
                // it): not an outage to report.
                if closed() {
                    return true;
                }
                if recovering.is_some() {
                    again = true;
                } else {
                    tracing::warn!("a Redis Cluster subscription was lost; subscribing again");
                    metrics::counter!("runner_redis_reconnects_total", "connection" => "shard_feed")
                        .increment(1);
                    recovering = Some(self.channels.clone().recover(live).boxed());
                }
            }
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
