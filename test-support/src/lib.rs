//! Helpers the crates' tests share. [`RedisServer`]: a real `redis-server`
//! per test on a free loopback port with its own temp dir, killed when
//! dropped; never the one on 6379. [`capture_logs`]: the log lines a test
//! makes, as text.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    aof: bool,
    /// The users file it runs with (`--aclfile`), if any.
    acl: Option<String>,
    child: Option<Child>,
}

/// The value of `name` in the text of an `INFO` reply
/// (`total_commands_processed`, `used_cpu_user`, `master_repl_offset`...),
/// parsed; `None` when it is missing or does not parse.
pub fn info_field<T: std::str::FromStr>(info: &str, name: &str) -> Option<T> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With an append-only file, so that a restart keeps every job.
    pub fn start_with_aof() -> Self {
        Self::start_with(true)
    }

    /// With the users of `acl` (lines of an ACL file) besides the default
    /// user, who keeps every right (the test's own connections use it).
    pub fn start_with_acl(acl: &str) -> Self {
        Self::start_full(
            false,
            Some(format!("{acl}\nuser default on nopass ~* &* +@all\n")),
        )
    }

    fn start_with(aof: bool) -> Self {
        Self::start_full(aof, None)
    }

    /// On `port` (a process under test was told it before Redis was up).
    pub fn start_on(port: u16) -> Self {
        Self::start_full_on(port, false, None)
    }

    fn start_full(aof: bool, acl: Option<String>) -> Self {
        Self::start_full_on(free_port(), aof, acl)
    }

    fn start_full_on(port: u16, aof: bool, acl: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = RedisServer {
            port,
            dir,
            aof,
            acl,
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The URL as ACL user `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    pub fn dir_path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--loglevel")
            .arg("warning");
        if self.aof {
            cmd.arg("--appendonly")
                .arg("yes")
                .arg("--appendfsync")
                .arg("always");
        } else {
            cmd.arg("--appendonly").arg("no");
        }
        if let Some(acl) = &self.acl {
            let path = self.dir.path().join("users.acl");
            std::fs::write(&path, acl).expect("writing the ACL file");
            cmd.arg("--aclfile").arg(path);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (is it installed? scripts/setup)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("redis url");
        loop {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                // Loading an AOF answers PING with an error; LOADING ends first.
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not come up on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server the way an operator restarts it (SIGTERM, so the
    /// AOF is flushed), then starts it again on the same port and dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on a pid we spawned.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// INFO `total_commands_processed`.
    pub fn total_commands(&self) -> u64 {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut c = client.get_connection().expect("connect");
        let info: String = redis::cmd("INFO").arg("stats").query(&mut c).expect("INFO");
        info_field(&info, "total_commands_processed").expect("total_commands_processed in INFO")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster on loopback: `masters` masters sharing the 16384 slots
/// and `replicas` replicas of each, every node a real `redis-server` with
/// its own temp dir and two free ports (clients, cluster bus), formed with
/// `CLUSTER MEET`, `CLUSTER ADDSLOTSRANGE` and `CLUSTER REPLICATE` (what
/// `redis-cli --cluster create` sends, with the bus ports said outright so
/// that no port is guessed). A replica takes over one second after its
/// master stops answering (`cluster-node-timeout 1000`). Killed when
/// dropped. `runner bench queue --cluster` starts its clusters with it too,
/// through the fallible [`RedisCluster::try_start`].
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    masters: usize,
    _dir: tempfile::TempDir,
}

pub struct ClusterNode {
    pub port: u16,
    pub bus_port: u16,
    /// The TLS port, on a cluster started with [`ClusterTls`].
    pub tls_port: Option<u16>,
    child: Option<Child>,
}

/// PEM files for a cluster whose clients and bus speak TLS: every node
/// also listens on a TLS port (`tls-cluster yes`: TLS clients are told the
/// TLS ports, the helper's own plain connections the plain ones).
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

type Fallible<T> = Result<T, String>;

impl ClusterNode {
    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        client.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Whether the process still runs.
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// Its process has ended (it could not bind its ports, or was killed).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// One command to this node.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Fallible<T> {
        let mut c = self
            .connection()
            .map_err(|e| format!("connecting to cluster node {}: {e}", self.port))?;
        cmd.query(&mut c)
            .map_err(|e| format!("a command to cluster node {}: {e}", self.port))
    }
}

impl RedisCluster {
    /// `masters` masters and `replicas` replicas of each.
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::try_start(masters, replicas, None).expect("starting a Redis Cluster")
    }

    /// With the users of `acl` (lines of an ACL file) on every node, besides
    /// the default user, who keeps every right (the test's own connections
    /// and the replication links use it).
    pub fn start_with_acl(masters: usize, replicas: usize, acl: &str) -> Self {
        Self::try_start(masters, replicas, Some(acl)).expect("starting a Redis Cluster")
    }

    /// With TLS for clients and for the cluster bus (see [`ClusterTls`]).
    pub fn start_with_tls(masters: usize, tls: &ClusterTls) -> Self {
        Self::try_start_full(masters, 0, None, Some(tls)).expect("starting a TLS Redis Cluster")
    }

    /// [`RedisCluster::start`] that says what failed instead of panicking.
    pub fn try_start(masters: usize, replicas: usize, acl: Option<&str>) -> Fallible<Self> {
        Self::try_start_full(masters, replicas, acl, None)
    }

    fn try_start_full(
        masters: usize,
        replicas: usize,
        acl: Option<&str>,
        tls: Option<&ClusterTls>,
    ) -> Fallible<Self> {
        if masters == 0 {
            return Err("a cluster needs at least one master".into());
        }
        let acl = acl.map(|a| format!("{a}\nuser default on nopass ~* &* +@all\n"));
        let dir = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
        let total = masters * (1 + replicas);
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(total),
            masters,
            _dir: dir,
        };
        for i in 0..total {
            let node_dir = cluster._dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).map_err(|e| format!("a node dir: {e}"))?;
            let mut node = spawn_cluster_node(&node_dir, acl.as_deref(), tls)?;
            // A free port can be taken by another process before the node
            // binds it: a node that exits is started again on other ports.
            let mut attempts = 1;
            loop {
                if node.query::<String>(&mut redis::cmd("PING")).is_ok() {
                    break;
                }
                if node.exited() {
                    if attempts >= 5 {
                        return Err(format!("cluster node {i} exited {attempts} times"));
                    }
                    attempts += 1;
                    node = spawn_cluster_node(&node_dir, acl.as_deref(), tls)?;
                    continue;
                }
                wait_until(&format!("cluster node {} answers", node.port), || {
                    node.query::<String>(&mut redis::cmd("PING")).is_ok() || node.exited()
                })?;
            }
            cluster.nodes.push(node);
        }
        let first = &cluster.nodes[0];
        for n in &cluster.nodes[1..] {
            let _: String = first.query(
                redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(n.port)
                    .arg(n.bus_port),
            )?;
        }
        let per = 16384 / masters;
        for (i, m) in cluster.nodes[..masters].iter().enumerate() {
            let start = i * per;
            let end = if i + 1 == masters {
                16383
            } else {
                start + per - 1
            };
            let _: String = m.query(
                redis::cmd("CLUSTER")
                    .arg("ADDSLOTSRANGE")
                    .arg(start)
                    .arg(end),
            )?;
        }
        // Every node knows every other before a replica names its master.
        for n in &cluster.nodes {
            wait_until("every node meets every other", || {
                n.query::<String>(redis::cmd("CLUSTER").arg("NODES"))
                    .is_ok_and(|nodes| {
                        nodes.lines().count() == total
                            && !nodes.contains("handshake")
                            && !nodes.contains("noaddr")
                    })
            })?;
        }
        let ids = cluster.nodes[..masters]
            .iter()
            .map(|m| m.query::<String>(redis::cmd("CLUSTER").arg("MYID")))
            .collect::<Fallible<Vec<_>>>()?;
        for (i, r) in cluster.nodes[masters..].iter().enumerate() {
            let _: String = r.query(
                redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(&ids[i % masters]),
            )?;
        }
        cluster.try_wait_healthy()?;
        Ok(cluster)
    }

    /// Until every live node says the cluster is ok, sees every slot
    /// served, and every live replica is in sync with its master.
    fn try_wait_healthy(&self) -> Fallible<()> {
        for n in self.nodes.iter().filter(|n| n.alive()) {
            wait_until("the cluster is ok on every node", || {
                let info: String = n
                    .query(redis::cmd("CLUSTER").arg("INFO"))
                    .unwrap_or_default();
                let repl: String = n
                    .query(redis::cmd("INFO").arg("replication"))
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            })?;
        }
        Ok(())
    }

    /// `redis+cluster://` with the masters as seeds.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}/", self.seeds())
    }

    /// The URL as ACL user `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis+cluster://{user}:{password}@{}/", self.seeds())
    }

    /// `rediss+cluster://` with the masters' TLS ports as seeds.
    pub fn tls_url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..self.masters]
            .iter()
            .filter_map(|n| n.tls_port)
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("rediss+cluster://{}/", seeds.join(","))
    }

    fn seeds(&self) -> String {
        self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn live(&self) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|n| n.alive())
            .expect("a live cluster node")
    }

    /// The port of the node that is master of `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let node = self.live();
        let slot: u16 = node
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .unwrap();
        let slots: redis::Value = node.query(redis::cmd("CLUSTER").arg("SLOTS")).unwrap();
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}");
        };
        for r in ranges {
            let redis::Value::Array(r) = r else { continue };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) = (r.first(), r.get(1))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&i64::from(slot))
                && let Some(redis::Value::Array(m)) = r.get(2)
                && let Some(redis::Value::Int(port)) = m.get(1)
            {
                return *port as u16;
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Kills the node on `port` at once (SIGKILL: a machine that died).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Until a node other than `dead` serves `key`'s slot and the
    /// cluster is ok again (a replica took over).
    pub fn wait_failover(&self, key: &str, dead: u16) {
        wait_until("a replica takes over", || {
            let info: String = self
                .live()
                .query(redis::cmd("CLUSTER").arg("INFO"))
                .unwrap_or_default();
            info.contains("cluster_state:ok") && self.master_of(key) != dead
        })
        .unwrap();
    }

    /// Until every live replica has acknowledged what its master had
    /// written when this was called (replicas acknowledge once a second).
    pub fn wait_replicated(&self) {
        for m in self.nodes.iter().filter(|n| n.alive()) {
            let info: String = m.query(redis::cmd("INFO").arg("replication")).unwrap();
            if !info.contains("role:master") {
                continue;
            }
            let Some(written) = info_field::<u64>(&info, "master_repl_offset") else {
                continue;
            };
            wait_until("the replicas acknowledge their master's writes", || {
                let info: String = m
                    .query(redis::cmd("INFO").arg("replication"))
                    .unwrap_or_default();
                // `slave0:ip=127.0.0.1,port=...,state=online,offset=N,lag=0`
                info.lines()
                    .filter(|l| l.starts_with("slave") && l.contains("ip="))
                    .all(|l| {
                        l.split(',')
                            .find_map(|f| f.strip_prefix("offset="))
                            .and_then(|v| v.parse::<u64>().ok())
                            .is_some_and(|acked| acked >= written)
                    })
            })
            .unwrap();
        }
    }

    /// INFO `section` of every live master, for callers that add figures
    /// up (commands processed, CPU).
    pub fn masters_info(&self, section: &str) -> Fallible<Vec<String>> {
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.alive()) {
            let role: String = n.query(redis::cmd("INFO").arg("replication"))?;
            if role.contains("role:master") {
                out.push(n.query(redis::cmd("INFO").arg(section))?);
            }
        }
        Ok(out)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Polls `ready` every 50 ms for up to 30 s.
/// Starts one cluster node in `node_dir` on free ports (not yet answering).
fn spawn_cluster_node(
    node_dir: &std::path::Path,
    acl: Option<&str>,
    tls: Option<&ClusterTls>,
) -> Fallible<ClusterNode> {
    let (port, bus_port) = (free_port(), free_port());
    let tls_port = tls.map(|_| free_port());
    let mut cmd = Command::new("redis-server");
    if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
        cmd.arg("--tls-port")
            .arg(tls_port.to_string())
            .arg("--tls-cluster")
            .arg("yes")
            .arg("--tls-cert-file")
            .arg(&tls.cert)
            .arg("--tls-key-file")
            .arg(&tls.key)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca)
            .arg("--tls-auth-clients")
            .arg("no");
    }
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--cluster-port")
        .arg(bus_port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(node_dir)
        .arg("--cluster-enabled")
        .arg("yes")
        .arg("--cluster-config-file")
        .arg(node_dir.join("nodes.conf"))
        .arg("--cluster-node-timeout")
        .arg("1000")
        // A replica may take over whatever the age of its data.
        .arg("--cluster-replica-validity-factor")
        .arg("0")
        .arg("--save")
        .arg("")
        .arg("--appendonly")
        .arg("no")
        .arg("--daemonize")
        .arg("no")
        .arg("--loglevel")
        .arg("warning");
    if let Some(acl) = acl {
        let path = node_dir.join("users.acl");
        std::fs::write(&path, acl).map_err(|e| format!("writing the ACL file: {e}"))?;
        cmd.arg("--aclfile").arg(path);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server (is it installed? scripts/setup): {e}"))?;
    Ok(ClusterNode {
        port,
        bus_port,
        tls_port,
        child: Some(child),
    })
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Fallible<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The log lines written since [`capture_logs`], as `tracing_subscriber`'s
/// plain format prints them (one line per event, its span's fields first).
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's log events at `level` and above until the guard
/// drops (a test on a current-thread runtime sees its tasks' events too).
pub fn capture_logs(level: tracing::Level) -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    let captured = CapturedLogs::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}
