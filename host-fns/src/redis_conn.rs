//! A Redis connection that counts the errors of its commands.
//!
//! Every Redis connection of the runner (broker, registry, beat store, kv)
//! goes through [`Counted`], a [`ConnectionLike`] around the reconnecting
//! [`ConnectionManager`]: each command that fails adds one to
//! `runner_redis_errors_total{command, kind}`.
//!
//! - `command` is the Redis command in lower case (`get`, `hget`, `mget`),
//!   or, for a Lua script, the name the caller gave it (`settle`,
//!   `kv_set`). Both come from this code, never from data, so the label set
//!   is bounded.
//! - `kind` is why: `connection` (refused, dropped, timed out: the server
//!   is down or unreachable), `unavailable` (the server answered that it
//!   cannot serve now: `LOADING`, `READONLY`, `MASTERDOWN`, `TRYAGAIN`,
//!   `CLUSTERDOWN`), `denied` (`NOPERM`, `NOAUTH`, `WRONGPASS`: the ACL
//!   user lacks a command or a key pattern) or `other` (a script's own
//!   error reply, a wrong type...).
//!
//! `NOSCRIPT` is not an error here: it is how a script is first loaded
//! (the client sends `EVALSHA`, then `SCRIPT LOAD` on `NOSCRIPT`).
//!
//! # Redis Cluster
//!
//! The same type holds a cluster connection ([`Counted::cluster`]): each
//! command goes to the master of its key's slot, following `MOVED` and
//! `ASK` and refreshing the slot map when a master fails over. A pipeline
//! whose commands live in one slot goes out as one pipeline; one that
//! spans slots (one read per queue, a binding and its history) is sent as
//! its commands, concurrently, each to its own node, and
//! answered in order: the callers keep one code path for both. A `MULTI`
//! over several slots cannot be atomic on a cluster; it runs the same way,
//! and only the runner's own non-critical pairs do that (a binding and its
//! history, a beat and its fire times).

/// A prelude for Lua scripts (after their shebang) that refuses a command
/// on a key the script did not declare in KEYS, as strict servers do
/// (Dragonfly; Kvrocks with `lua-strict-key-accessing`). Redis itself does
/// not check it, so tests put this before every script of the runner.
pub const STRICT_KEYS_LUA: &str = include_str!("redis_strict.lua");

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// One Redis server, or a cluster of them.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A [`ConnectionManager`] (or a cluster connection) whose failed
/// commands are counted.
#[derive(Clone)]
pub struct Counted {
    inner: Link,
    /// Script SHA1 -> its name, for the `command` label of `EVALSHA`.
    scripts: Arc<HashMap<String, &'static str>>,
}

impl Counted {
    pub fn new(inner: ConnectionManager) -> Self {
        Self {
            inner: Link::Single(inner),
            scripts: Arc::default(),
        }
    }

    /// A connection to a Redis Cluster (see the module's docs).
    pub fn cluster(inner: ClusterConnection) -> Self {
        Self {
            inner: Link::Cluster(inner),
            scripts: Arc::default(),
        }
    }

    /// Whether this connection talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Link::Cluster(_))
    }

    /// Names the scripts this connection runs: their failures are counted
    /// under these names instead of `evalsha`.
    pub fn with_scripts<'a>(
        mut self,
        scripts: impl IntoIterator<Item = (&'static str, &'a redis::Script)>,
    ) -> Self {
        let mut map = (*self.scripts).clone();
        map.extend(
            scripts
                .into_iter()
                .map(|(name, s)| (s.get_hash().to_owned(), name)),
        );
        self.scripts = Arc::new(map);
        self
    }

    fn command_name(&self, cmd: &Cmd) -> &'static str {
        let mut args = cmd.args_iter();
        let Some(redis::Arg::Simple(name)) = args.next() else {
            return "other";
        };
        if name.eq_ignore_ascii_case(b"EVALSHA") {
            if let Some(redis::Arg::Simple(sha)) = args.next()
                && let Ok(sha) = std::str::from_utf8(sha)
                && let Some(script) = self.scripts.get(sha)
            {
                return script;
            }
            return "script";
        }
        known_command(name)
    }

    fn pipeline_name(&self, pipeline: &Pipeline) -> &'static str {
        pipeline
            .cmd_iter()
            .map(|c| self.command_name(c))
            .find(|n| *n != "multi")
            .unwrap_or("other")
    }
}

/// The commands the runner sends (those of `deploy/redis-users.acl`) and a
/// few an operator may see refused, as `&'static str` labels; anything else
/// is `other` (the label set stays bounded whatever a caller sends).
fn known_command(name: &[u8]) -> &'static str {
    // The reads (`READS`), then every other command.
    const OTHERS: &[&str] = &[
        "select",
        "multi",
        "exec",
        "discard",
        "eval",
        "evalsha",
        "script",
        "set",
        "setnx",
        "setex",
        "mset",
        "del",
        "incrby",
        "decrby",
        "pexpire",
        "hset",
        "hsetnx",
        "hdel",
        "hincrby",
        "sadd",
        "srem",
        "lpush",
        "rpush",
        "lpop",
        "lrem",
        "ltrim",
        "zadd",
        "zrem",
        "zpopmin",
        "zremrangebyscore",
        "publish",
        "cluster",
        "subscribe",
        "psubscribe",
        "unsubscribe",
        "punsubscribe",
        "spublish",
        "ssubscribe",
        "sunsubscribe",
        "keys",
        "scan",
        "info",
        "client",
    ];
    READS
        .iter()
        .chain(OTHERS)
        .find(|k| name.eq_ignore_ascii_case(k.as_bytes()))
        .copied()
        .unwrap_or("other")
}

/// `kind` of a failed command (see the module's docs).
pub fn error_kind(e: &RedisError) -> &'static str {
    match e.code() {
        Some("NOPERM" | "NOAUTH" | "WRONGPASS") => return "denied",
        Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN") => {
            return "unavailable";
        }
        _ => {}
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        "denied"
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
    {
        "connection"
    } else {
        "other"
    }
}

fn count(command: &'static str, kind: &'static str) {
    metrics::counter!("runner_redis_errors_total", "command" => command, "kind" => kind)
        .increment(1);
}

/// Counts an error reply inside an otherwise delivered answer.
fn count_reply(command: &'static str, v: &Value) {
    if let Value::ServerError(e) = v
        && e.code() != "NOSCRIPT"
    {
        count(command, error_kind(&RedisError::from(e.clone())));
    }
}

/// The key a command is routed by: the first key of a script call (none
/// when it declares none), the first argument of a command on keys, none
/// for the commands without a key the runner sends.
fn routing_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()??;
    let upper = name.to_ascii_uppercase();
    match upper.as_slice() {
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" => {
            args.next()?;
            let keys: usize = std::str::from_utf8(args.next()??).ok()?.parse().ok()?;
            if keys == 0 { None } else { args.next()? }
        }
        // PUBLISH is routed by its channel, as if it were a key.
        b"PING" | b"TIME" | b"SCRIPT" | b"MULTI" | b"EXEC" | b"DISCARD" | b"INFO" | b"CLUSTER"
        | b"CLIENT" | b"SELECT" => None,
        _ => args.next()?,
    }
}

/// Whether a command names keys of more than one slot (`MGET`, `DEL`...
/// over keys of different slots; the cluster client splits it itself).
fn spans_slots(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let Some(name) = args.next() else {
        return false;
    };
    let upper = name.to_ascii_uppercase();
    let keys: Vec<&[u8]> = match upper.as_slice() {
        b"MGET" | b"DEL" | b"EXISTS" | b"UNLINK" | b"TOUCH" => args.collect(),
        b"MSET" => args.step_by(2).collect(),
        _ => return false,
    };
    keys.windows(2)
        .any(|w| Slot::for_key(w[0]) != Slot::for_key(w[1]))
}

/// Whether `pipeline` can go to one node as it is: its commands route to
/// at most one slot, and none of them spans slots.
fn one_slot(pipeline: &Pipeline) -> bool {
    let mut slot = None;
    for cmd in pipeline.cmd_iter() {
        if spans_slots(cmd) {
            return false;
        }
        if let Some(key) = routing_key(cmd) {
            let s = Slot::for_key(key);
            match slot {
                None => slot = Some(s),
                Some(prev) if prev != s => return false,
                Some(_) => {}
            }
        }
    }
    true
}

/// Commands that only read: sent a second time when the connection they
/// went out on turns out to be dead. After Redis restarts, a
/// [`ConnectionManager`] learns that its connection is gone from the first
/// command that fails, then reconnects; a read that failed that way is
/// safe to send again, so it does not surface as an error (a 503 from the
/// API). Writes are not repeated: one may have been applied before its
/// reply was lost, and a second `INCRBY`, `LPUSH` or script would apply it
/// twice.
const READS: &[&str] = &[
    "get",
    "mget",
    "hget",
    "hgetall",
    "hmget",
    "hexists",
    "hkeys",
    "smembers",
    "lrange",
    "llen",
    "zscore",
    "zmscore",
    "zcard",
    "zcount",
    "zrange",
    "zrangebyscore",
    "exists",
    "pttl",
    "time",
    "ping",
];

fn only_reads(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => READS
            .iter()
            .any(|r| name.eq_ignore_ascii_case(r.as_bytes())),
        _ => false,
    }
}

/// The connection the command went out on is gone (reset, broken pipe,
/// closed): the manager reconnects for the next command.
fn connection_lost(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error()
}

impl Link {
    async fn command(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Link::Single(c) => match c.req_packed_command(cmd).await {
                Err(e) if connection_lost(&e) && only_reads(cmd) => c.req_packed_command(cmd).await,
                other => other,
            },
            // The cluster client retries on its own (and follows fail-overs).
            Link::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }

    async fn pipeline(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        n: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        match self {
            Link::Single(c) => match c.req_packed_commands(pipeline, offset, n).await {
                Err(e)
                    if connection_lost(&e)
                        && !pipeline.is_transaction()
                        && pipeline.cmd_iter().all(only_reads) =>
                {
                    c.req_packed_commands(pipeline, offset, n).await
                }
                other => other,
            },
            Link::Cluster(c) if one_slot(pipeline) => {
                c.req_packed_commands(pipeline, offset, n).await
            }
            Link::Cluster(c) => {
                // Each command to its own slot's node, all at once; the
                // answers in the order of the commands.
                let sent = pipeline.cmd_iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { c.req_packed_command(cmd).await }
                });
                let values = futures::future::try_join_all(sent).await?;
                if pipeline.is_transaction() {
                    Ok(vec![Value::Array(values)])
                } else {
                    Ok(values)
                }
            }
        }
    }

    fn db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(_) => 0,
        }
    }
}

impl ConnectionLike for Counted {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.command(cmd).await;
            match &result {
                Ok(v) => count_reply(self.command_name(cmd), v),
                Err(e) if e.code() != Some("NOSCRIPT") => {
                    count(self.command_name(cmd), error_kind(e));
                }
                Err(_) => {}
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        n: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.inner.pipeline(pipeline, offset, n).await;
            match &result {
                Ok(values) => {
                    for v in values {
                        count_reply(self.pipeline_name(pipeline), v);
                    }
                }
                Err(e) => count(self.pipeline_name(pipeline), error_kind(e)),
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_labels_are_bounded() {
        assert_eq!(known_command(b"HGET"), "hget");
        assert_eq!(known_command(b"zrangebyscore"), "zrangebyscore");
        assert_eq!(known_command(b"anything-a-caller-sends"), "other");
    }

    /// Every command the runner's ACL user may run has its own label.
    #[test]
    fn every_command_of_the_acl_has_a_label() {
        let acl = include_str!("../../deploy/redis-users.acl");
        let user = acl.lines().find(|l| l.starts_with("user runner ")).unwrap();
        let commands: Vec<&str> = user
            .split(' ')
            .filter_map(|w| w.strip_prefix('+'))
            .map(|c| c.split('|').next().unwrap())
            .collect();
        assert!(commands.len() > 40, "{commands:?}");
        for c in commands {
            assert_eq!(known_command(c.as_bytes()), c);
        }
    }

    /// A pipeline goes to one node only when every key it names hashes to
    /// one slot; anything else is split command by command.
    #[test]
    fn pipelines_are_split_where_they_span_slots() {
        let mut same = redis::pipe();
        same.get("runner:{a}:job:1")
            .zcard("runner:{a}:leases")
            .publish("runner:{a}:ch", "m");
        assert!(one_slot(&same));
        // The cluster client routes PUBLISH by its channel.
        let mut publish = redis::pipe();
        publish
            .hset("runner:{a}:progress", "1", "{}")
            .publish("runner:q:a", "m");
        assert!(!one_slot(&publish));
        let mut two = redis::pipe();
        two.get("runner:{a}:job:1").get("runner:{b}:job:1");
        assert!(!one_slot(&two));
        let mut mget = redis::pipe();
        mget.cmd("MGET")
            .arg("runner:worker:1")
            .arg("runner:worker:2");
        assert!(!one_slot(&mget));
        let mut script = redis::pipe();
        script
            .cmd("EVALSHA")
            .arg("abc")
            .arg(1)
            .arg("runner:{a}:ready")
            .arg("runner:{b}:not-a-key");
        script.get("runner:{a}:job:2");
        assert!(one_slot(&script));
        let mut keyless = redis::pipe();
        keyless.cmd("EVALSHA").arg("abc").arg(0).arg("x");
        keyless.get("runner:{b}:job:1");
        assert!(one_slot(&keyless));
    }

    /// Only reads are sent again after a lost connection.
    #[test]
    fn only_reads_are_repeated() {
        assert!(only_reads(redis::cmd("HGETALL").arg("runner:beats")));
        assert!(only_reads(redis::cmd("zrange").arg("k").arg(0).arg(1)));
        for write in [
            "SET", "HSET", "INCRBY", "LPUSH", "EVALSHA", "PUBLISH", "DEL",
        ] {
            assert!(!only_reads(redis::cmd(write).arg("k")), "{write}");
        }
    }

    #[test]
    fn errors_are_classified_by_what_an_operator_does_about_them() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(error_kind(&io), "connection");
    }
}
