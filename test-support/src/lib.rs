//! Helpers the crates' tests share. [`RedisServer`]: a real `redis-server`
//! per test on a free loopback port with its own temp dir, killed when
//! dropped; never the one on 6379.

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
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_commands_processed in INFO")
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
