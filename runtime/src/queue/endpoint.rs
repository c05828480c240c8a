//! Where the runner's Redis is, and how to reach it: one server
//! (`redis://`, `rediss://`) or a Redis Cluster (`redis+cluster://`,
//! `rediss+cluster://` with a comma-separated list of seed nodes).
//!
//! [`RedisEndpoint`] opens the two kinds of connection every Redis user of
//! the runner needs: a command connection ([`Counted`], which reconnects,
//! and on a cluster follows `MOVED`/`ASK` and fail-overs) and pub/sub
//! connections. On one server pub/sub is the classic kind. On a cluster, a
//! queue's events go over sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`, Redis
//! 7): heard on the queue's own shard, not relayed over the whole
//! cluster's bus (`shard_feed.rs`). A cluster URL ending in `?pubsub=classic`
//! keeps them on classic pub/sub, which every node relays to every other
//! (for servers before Redis 7, and while a fleet is upgraded: every
//! process must use the same kind). The channels that are not a queue's
//! (control, workflows, registry and beat changes) are classic on both. A
//! classic subscription whose node dies is opened again on the next seed
//! that answers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::Client;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use runner_host_fns::redis_conn::Counted;

/// A single Redis server or a Redis Cluster, ready to connect to.
#[derive(Clone)]
pub struct RedisEndpoint {
    /// One client per node to subscribe through: the server, or the
    /// cluster's seed nodes (tried in turn from the last that answered).
    nodes: Arc<Vec<Client>>,
    next: Arc<AtomicUsize>,
    cluster: Option<ClusterClient>,
    /// On a cluster with sharded pub/sub: how to open its subscriptions.
    shards: Option<Arc<ShardSeeds>>,
}

/// What a cluster's sharded subscriptions connect with (each has a client
/// of its own: the messages of a cluster connection go to the one sender
/// its client was built with).
pub(crate) struct ShardSeeds {
    seeds: Vec<String>,
    tls: RedisTls,
}

impl ShardSeeds {
    /// A cluster client speaking RESP3 (pub/sub messages share the
    /// connections with replies), whose messages and disconnections go to
    /// `push`.
    pub(crate) fn client(
        &self,
        push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> redis::RedisResult<ClusterClient> {
        cluster_builder(&self.seeds, &self.tls)?
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            // A subscription waits on nothing but its confirmation.
            .response_timeout(Duration::from_secs(10))
            .build()
    }
}

/// A cluster URL, read: its seed nodes and its kind of pub/sub.
#[derive(Debug, PartialEq, Eq)]
pub struct ClusterUrl {
    pub seeds: Vec<String>,
    /// Queue events over sharded pub/sub (the default), or classic
    /// (`?pubsub=classic`).
    pub sharded: bool,
}

fn cluster_builder(seeds: &[String], tls: &RedisTls) -> redis::RedisResult<ClusterClientBuilder> {
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(Duration::from_secs(5))
        // Scripts over large batches may take a while.
        .response_timeout(Duration::from_secs(30))
        .tcp_settings(tcp_settings());
    if !tls.is_empty() {
        builder = builder.certs(tls.certificates()?);
    }
    Ok(builder)
}

/// The seeds and pub/sub kind of a cluster URL
/// (`redis+cluster://[user:pass@]h1:p1,h2:p2[/0][?pubsub=classic]`); None
/// for the URL of one server.
pub fn cluster_url(url: &str) -> Option<Result<ClusterUrl, String>> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let plain = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return None,
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut sharded = true;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        sharded = match param {
            "pubsub=sharded" => true,
            "pubsub=classic" => false,
            other => {
                return Some(Err(format!(
                    "a Redis Cluster URL takes one parameter, pubsub=sharded or \
                     pubsub=classic, not `{other}` ({})",
                    redact_url(url)
                )));
            }
        };
    }
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), rest),
    };
    let (hosts, db) = hosts.split_once('/').unwrap_or((hosts, ""));
    if !(db.is_empty() || db == "0") {
        return Some(Err(format!(
            "a Redis Cluster has only database 0, not /{db} ({})",
            redact_url(url)
        )));
    }
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{plain}://{userinfo}{h}/"))
        .collect();
    if seeds.is_empty() {
        return Some(Err(format!(
            "a Redis Cluster URL needs at least one host:port ({})",
            redact_url(url)
        )));
    }
    Some(Ok(ClusterUrl { seeds, sharded }))
}

fn invalid(e: String) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

impl RedisEndpoint {
    /// The endpoint of `url`, with the TLS files `tls`. Nothing connects
    /// yet; a malformed URL or unreadable TLS file is refused here.
    pub fn open(url: &str, tls: &RedisTls) -> redis::RedisResult<Self> {
        match cluster_url(url) {
            None => Ok(RedisEndpoint {
                nodes: Arc::new(vec![open_client_with(url, tls)?]),
                next: Arc::default(),
                cluster: None,
                shards: None,
            }),
            Some(parsed) => {
                tls.check(url).map_err(invalid)?;
                let ClusterUrl { seeds, sharded } = parsed.map_err(invalid)?;
                let nodes = seeds
                    .iter()
                    .map(|s| open_client_with(s, tls))
                    .collect::<redis::RedisResult<Vec<_>>>()?;
                let cluster = cluster_builder(&seeds, tls)?.build()?;
                Ok(RedisEndpoint {
                    nodes: Arc::new(nodes),
                    next: Arc::default(),
                    cluster: Some(cluster),
                    shards: sharded.then(|| {
                        Arc::new(ShardSeeds {
                            seeds,
                            tls: tls.clone(),
                        })
                    }),
                })
            }
        }
    }

    /// On a cluster with sharded pub/sub, how its subscriptions connect;
    /// None where queue events are classic pub/sub.
    pub(crate) fn shards(&self) -> Option<&Arc<ShardSeeds>> {
        self.shards.as_ref()
    }

    /// A command connection (reconnecting; on a cluster, routed by slot).
    pub async fn connect(&self) -> redis::RedisResult<Counted> {
        match &self.cluster {
            Some(cluster) => Ok(Counted::cluster(cluster.get_async_connection().await?)),
            None => {
                let cfg = ConnectionManagerConfig::new()
                    // Scripts over large batches may take a while; nothing
                    // on this connection blocks on purpose.
                    .set_response_timeout(Some(Duration::from_secs(30)))
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                let conn = ConnectionManager::new_with_config(self.nodes[0].clone(), cfg).await?;
                Ok(Counted::new(conn))
            }
        }
    }

    /// One PING on a fresh connection (a cluster answers once its slots
    /// are served).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        match &self.cluster {
            Some(cluster) => {
                let mut conn = cluster.get_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
            }
            None => {
                let mut conn = self.nodes[0].get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
            }
        }
        Ok(())
    }

    /// A pub/sub connection: to the server, or to the first seed of the
    /// cluster that answers (from the one that answered last).
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let n = self.nodes.len();
        let first = self.next.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let at = (first + i) % n;
            match self.nodes[at].get_async_pubsub().await {
                Ok(ps) => {
                    self.next.store(at, Ordering::Relaxed);
                    return Ok(ps);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| invalid("no Redis node to subscribe to".into())))
    }
}

/// A Redis client for `url` whose connections have TCP keepalive (probes
/// after 30 s idle, every 10 s) and, on Linux, a 60 s user timeout: a peer
/// that vanished without a word is noticed by the kernel too.
pub fn open_client(url: &str) -> redis::RedisResult<Client> {
    open_client_with(url, &RedisTls::default())
}

/// The files a `rediss://` connection uses instead of the defaults: a CA
/// that signed the server's certificate (default: the system's roots),
/// and a client certificate and key for servers that ask for one (mutual
/// TLS). Paths, read when a client is opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl RedisTls {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Checks the combination before anything connects: the files need a
    /// `rediss://` URL, and a client certificate needs its key.
    pub fn check(&self, url: &str) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        let url_tls = url.trim_start();
        if !(url_tls.starts_with("rediss://") || url_tls.starts_with("rediss+cluster://")) {
            return Err(format!(
                "TLS files are set but the Redis URL is not rediss:// or rediss+cluster:// ({})",
                redact_url(url)
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => Err("a TLS client certificate needs its key (tls_key)".into()),
            (None, Some(_)) => Err("a TLS client key needs its certificate (tls_cert)".into()),
            _ => Ok(()),
        }
    }

    pub(crate) fn certificates(&self) -> redis::RedisResult<redis::TlsCertificates> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| {
                redis::RedisError::from(std::io::Error::new(
                    e.kind(),
                    format!("reading the Redis TLS {what} {}: {e}", p.display()),
                ))
            })
        };
        let client_tls = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                client_cert: read(c, "certificate")?,
                client_key: read(k, "key")?,
            }),
            _ => None,
        };
        let root_cert = self.ca.as_ref().map(|p| read(p, "CA")).transpose()?;
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}

/// `url` as it may be shown: its password replaced by `***`
/// (`rediss://runner:***@redis:6380/0`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The last '@' ends the user part, whatever the password holds.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            // `user:password@` (or `:password@`): the part after ':' is
            // the secret; a lone `user@` is a name.
            let hidden = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => userinfo.to_string(),
            };
            format!("{scheme}://{hidden}@{host}")
        }
        None => url.to_string(),
    }
}

/// [`open_client`] with the TLS files `tls` (see [`RedisTls`]).
pub fn open_client_with(url: &str, tls: &RedisTls) -> redis::RedisResult<Client> {
    use redis::IntoConnectionInfo;
    // rustls needs the process's one crypto provider before any TLS.
    runner_host_fns::install_crypto_provider();
    if let Err(e) = tls.check(url) {
        return Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            e,
        )));
    }
    let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
    if tls.is_empty() {
        Client::open(info)
    } else {
        Client::build_with_tls(info, tls.certificates()?)
    }
}

/// TCP keepalive (probes after 30 s idle, every 10 s) and, on Linux, a 60 s
/// user timeout.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    #[cfg(target_os = "linux")]
    let keepalive = keepalive.with_retries(3);
    let tcp = redis::io::tcp::TcpSettings::default().set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(Duration::from_secs(60));
    tcp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds() {
        let seeds = |url: &str| cluster_url(url).unwrap().map(|c| c.seeds);
        assert!(cluster_url("redis://127.0.0.1:6379/0").is_none());
        assert_eq!(
            seeds("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/"),
            Ok(vec![
                "redis://u:p@10.0.0.1:7000/".to_string(),
                "redis://u:p@10.0.0.2:7001/".to_string(),
            ])
        );
        assert_eq!(
            seeds("rediss+cluster://h:1"),
            Ok(vec!["rediss://h:1/".to_string()])
        );
        let db = cluster_url("redis+cluster://u:secret@h:1/3")
            .unwrap()
            .unwrap_err();
        assert!(db.contains("only database 0"), "{db}");
        assert!(!db.contains("secret"), "{db}");
        let none = cluster_url("redis+cluster://u:secret@/")
            .unwrap()
            .unwrap_err();
        assert!(none.contains("at least one host"), "{none}");
        assert!(!none.contains("secret"), "{none}");
        assert!(
            RedisTls {
                ca: Some("ca.pem".into()),
                ..RedisTls::default()
            }
            .check("rediss+cluster://h:1,h:2")
            .is_ok()
        );
    }

    /// Queue events are sharded on a cluster unless the URL says classic;
    /// any other parameter is refused, not ignored.
    #[test]
    fn cluster_urls_say_their_kind_of_pub_sub() {
        let sharded = |url: &str| cluster_url(url).unwrap().map(|c| c.sharded);
        assert_eq!(sharded("redis+cluster://h:1,h:2/"), Ok(true));
        assert_eq!(sharded("redis+cluster://h:1/?pubsub=sharded"), Ok(true));
        assert_eq!(
            sharded("redis+cluster://u:p@h:1,h:2/0?pubsub=classic"),
            Ok(false)
        );
        assert_eq!(
            cluster_url("redis+cluster://h:1?pubsub=classic")
                .unwrap()
                .unwrap()
                .seeds,
            vec!["redis://h:1/".to_string()]
        );
        let bad = sharded("redis+cluster://u:secret@h:1/?pubsub=fast").unwrap_err();
        assert!(bad.contains("`pubsub=fast`"), "{bad}");
        assert!(!bad.contains("secret"), "{bad}");
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        for (url, shown) in [
            (
                "rediss://runner:s3cret@redis.internal:6380/0",
                "rediss://runner:***@redis.internal:6380/0",
            ),
            ("redis://:s3cret@127.0.0.1/", "redis://:***@127.0.0.1/"),
            ("redis://runner@127.0.0.1/", "redis://runner@127.0.0.1/"),
            ("redis://127.0.0.1:6379/2", "redis://127.0.0.1:6379/2"),
            // Unencoded '/', '@' and '#' in a password hide nothing of it.
            ("redis://u:a/b@c#d@host:1/0", "redis://u:***@host:1/0"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn tls_files_need_a_rediss_url_and_a_key_with_a_certificate() {
        let ca = RedisTls {
            ca: Some("/ca.pem".into()),
            ..RedisTls::default()
        };
        let e = ca.check("redis://u:pw@h/").unwrap_err();
        assert!(e.contains("not rediss://") && !e.contains("pw"), "{e}");
        assert!(ca.check("rediss://h/").is_ok());
        let cert_only = RedisTls {
            cert: Some("/c.pem".into()),
            ..RedisTls::default()
        };
        assert!(
            cert_only
                .check("rediss://h/")
                .unwrap_err()
                .contains("tls_key")
        );
        assert!(RedisTls::default().check("redis://h/").is_ok());
    }
}
