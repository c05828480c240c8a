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

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// A [`ConnectionManager`] whose failed commands are counted.
#[derive(Clone)]
pub struct Counted {
    inner: ConnectionManager,
    /// Script SHA1 -> its name, for the `command` label of `EVALSHA`.
    scripts: Arc<HashMap<String, &'static str>>,
}

impl Counted {
    pub fn new(inner: ConnectionManager) -> Self {
        Self {
            inner,
            scripts: Arc::default(),
        }
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

    /// The connection without counting.
    pub fn manager(&self) -> ConnectionManager {
        self.inner.clone()
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
    const KNOWN: &[&str] = &[
        "ping",
        "select",
        "multi",
        "exec",
        "discard",
        "eval",
        "evalsha",
        "script",
        "get",
        "set",
        "setnx",
        "setex",
        "mget",
        "mset",
        "del",
        "exists",
        "incrby",
        "decrby",
        "pexpire",
        "pttl",
        "hget",
        "hset",
        "hsetnx",
        "hdel",
        "hgetall",
        "hmget",
        "hexists",
        "hincrby",
        "hkeys",
        "sadd",
        "srem",
        "smembers",
        "lpush",
        "rpush",
        "lpop",
        "lrange",
        "lrem",
        "ltrim",
        "llen",
        "zadd",
        "zrem",
        "zpopmin",
        "zscore",
        "zmscore",
        "zcard",
        "zcount",
        "zrange",
        "zrangebyscore",
        "zremrangebyscore",
        "time",
        "publish",
        "subscribe",
        "psubscribe",
        "unsubscribe",
        "punsubscribe",
        "keys",
        "scan",
        "info",
        "client",
    ];
    KNOWN
        .iter()
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

impl ConnectionLike for Counted {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
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
            let result = self.inner.req_packed_commands(pipeline, offset, n).await;
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
        self.inner.get_db()
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

    #[test]
    fn errors_are_classified_by_what_an_operator_does_about_them() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(error_kind(&io), "connection");
    }
}
