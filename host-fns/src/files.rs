//! Files under operator-configured named roots (`reports`, `logs`, ...).
//!
//! The operator maps root names to directories ([`FilesConfig`]); a task's
//! [`FilesGrant`] names the roots it may use, each read-only or read-write.
//! Paths are relative to the root with `/` separators.
//!
//! # Never outside a root
//!
//! Whoever else can write into a root (another program, another task) may
//! rename, delete or swap anything in it at any moment, so no path string
//! is ever checked and then used again:
//! - absolute paths and `..` components are refused (`denied`) before the
//!   filesystem is consulted, and so are paths of more than
//!   [`MAX_DEPTH`] components (`invalid`): a write makes the directories
//!   it needs, which no quota counts, and makes none when the quota
//!   refuses it;
//! - every call opens the root directory, then everything beneath it
//!   relative to that directory with `openat2(2)` and
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: the kernel resolves the
//!   whole path in one step and refuses any symlink on the way, so a
//!   directory swapped for a symlink between two calls is refused, never
//!   followed;
//! - reads and writes go through the file descriptors so opened; a write
//!   goes to a temporary file in the target's directory, then `renameat`
//!   into place; missing parent directories are made with `mkdirat`
//!   relative to their parent's descriptor; `delete` and `cleanup`
//!   `unlinkat` the name relative to the descriptor of the directory the
//!   file was found in;
//! - `list`, `cleanup` and `disk_usage` walk the tree with directory
//!   descriptors: read a directory's entries from its descriptor,
//!   `fstatat(AT_SYMLINK_NOFOLLOW)` each relative to it, and enter a
//!   subdirectory with `openat2` (as above) from the walk's starting
//!   directory; a file is deleted relative to the descriptor of the
//!   directory it was listed in.
//!
//! **Symlinks.** Every symlink under a root is refused: a path through one,
//! or naming one, is `denied` for `read`, `write` and `list` (even when it
//! would stay inside the root: that check could not be made race-free).
//! `delete` removes a symlink itself (never its target); `list` shows it as
//! it is; `cleanup` and `disk_usage` neither follow nor delete it.
//!
//! `read` refuses anything but a regular file (FIFO, socket, device) with
//! `invalid`; it opens with `O_NONBLOCK | O_NOFOLLOW`, so opening a FIFO
//! does not block either.
//!
//! `openat2` needs Linux 5.6 or newer: [`FilesService::new`] fails when the
//! kernel (or a seccomp filter) refuses it, and a call that meets `ENOSYS`
//! fails `unavailable`; no call ever falls back to resolving paths itself.
//!
//! # Limits
//!
//! Every number is a field of [`FilesConfig`] (under `[host.files]` in
//! `runner.toml`):
//! - `max_file_bytes` (default [`DEFAULT_MAX_FILE_BYTES`], 64 MiB): the
//!   largest file `write` accepts and `read` returns (`invalid`).
//! - `quotas`: per root, `max_bytes` and/or `max_files` (regular files under
//!   the root, whoever wrote them). Roots without an entry have no quota
//!   (the default: a root is often a directory other programs fill too,
//!   and a quota there would refuse writes as soon as the runner is
//!   upgraded). A `write` that would take the root over its quota fails
//!   `permanent`, naming the root and the quota. The usage is measured by
//!   one walk of the root at the first write, then kept up to date by
//!   `write`, `delete` and `cleanup` (and set anew by each `disk_usage`);
//!   it is measured again when older than `usage_refresh` (default
//!   [`DEFAULT_USAGE_REFRESH`], 10 minutes), to catch what other programs
//!   did. Concurrent writes of the same file may leave it a little off
//!   until then.
//! - `max_walk_entries` (default [`DEFAULT_MAX_WALK_ENTRIES`], 1,000,000)
//!   and `walk_timeout` (seconds, default [`DEFAULT_WALK_TIMEOUT`], 30):
//!   what one `cleanup`, `disk_usage` or quota measurement may visit, and
//!   for how long. Past either it stops with `permanent` (entries) or
//!   `transient` (time), saying so (the WIT has no "truncated" flag, so
//!   a partial answer is never passed off as a whole one); what a
//!   stopped `cleanup` had deleted stays deleted, and its error says how
//!   many files and bytes. `cleanup` walks only the directory its glob's
//!   literal leading components name (`app/2026/*.log` walks `app/2026`),
//!   so a task can keep within the bound on a big root.
//! - `max_list_entries` (default [`DEFAULT_MAX_LIST_ENTRIES`], 100,000):
//!   `list` of a directory holding more fails `permanent`.
//!
//! ```toml
//! [host.files]
//! # max_file_bytes = 67108864
//! # max_walk_entries = 1000000
//! # walk_timeout = 30          # seconds
//! # max_list_entries = 100000
//! # usage_refresh = 600        # seconds
//!
//! [host.files.roots]
//! reports = "/srv/reports"
//!
//! [host.files.quotas]          # roots not named here have no quota
//! reports = { max_bytes = 10737418240, max_files = 100000 }
//! ```
//!
//! Filesystem work runs on tokio's blocking pool.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::HostError;
use crate::trace::traced;

const CAPABILITY: &str = "files";

/// The largest file `write` accepts and `read` returns, unless configured.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Entries one tree walk may visit, unless configured.
pub const DEFAULT_MAX_WALK_ENTRIES: u64 = 1_000_000;
/// How long one tree walk may take, unless configured.
pub const DEFAULT_WALK_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries `list` returns at most, unless configured.
pub const DEFAULT_MAX_LIST_ENTRIES: u64 = 100_000;
/// Age past which a root's measured usage is measured again.
pub const DEFAULT_USAGE_REFRESH: Duration = Duration::from_secs(600);

/// Operator configuration: root name -> directory, and the limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilesConfig {
    pub roots: BTreeMap<String, PathBuf>,
    /// Largest file a task may write or read in one call.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Quota of each root that has one (root name -> quota).
    #[serde(default)]
    pub quotas: BTreeMap<String, RootQuota>,
    /// Entries one `cleanup`, `disk_usage` or quota measurement may visit.
    #[serde(default = "default_max_walk_entries")]
    pub max_walk_entries: u64,
    /// How long one such walk may take, in seconds.
    #[serde(default = "default_walk_timeout", with = "crate::serde_secs")]
    pub walk_timeout: Duration,
    /// Entries of one directory `list` returns at most.
    #[serde(default = "default_max_list_entries")]
    pub max_list_entries: u64,
    /// Age, in seconds, past which a root's usage is measured again.
    #[serde(default = "default_usage_refresh", with = "crate::serde_secs")]
    pub usage_refresh: Duration,
}

/// What one root may hold; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootQuota {
    /// Bytes of the regular files under the root.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Regular files under the root.
    #[serde(default)]
    pub max_files: Option<u64>,
}

impl RootQuota {
    fn is_limited(&self) -> bool {
        self.max_bytes.is_some() || self.max_files.is_some()
    }
}

fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

fn default_max_walk_entries() -> u64 {
    DEFAULT_MAX_WALK_ENTRIES
}

fn default_walk_timeout() -> Duration {
    DEFAULT_WALK_TIMEOUT
}

fn default_max_list_entries() -> u64 {
    DEFAULT_MAX_LIST_ENTRIES
}

fn default_usage_refresh() -> Duration {
    DEFAULT_USAGE_REFRESH
}

impl FilesConfig {
    pub fn new(roots: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        Self {
            roots: roots.into_iter().collect(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            quotas: BTreeMap::new(),
            max_walk_entries: DEFAULT_MAX_WALK_ENTRIES,
            walk_timeout: DEFAULT_WALK_TIMEOUT,
            max_list_entries: DEFAULT_MAX_LIST_ENTRIES,
            usage_refresh: DEFAULT_USAGE_REFRESH,
        }
    }
}

/// How a task may use one root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// The roots one task may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesGrant {
    pub roots: BTreeMap<String, Access>,
}

impl FilesGrant {
    pub fn new(roots: impl IntoIterator<Item = (impl Into<String>, Access)>) -> Self {
        Self {
            roots: roots.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }
}

/// One file or directory, as `list` and `cleanup` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: u64,
    pub is_dir: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// What was deleted, or with `dry_run`, what would be.
    pub deleted: Vec<Entry>,
    pub bytes_freed: u64,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Size of the filesystem that holds the root.
    pub total_bytes: u64,
    /// Space available to unprivileged users on that filesystem.
    pub free_bytes: u64,
    /// Bytes in the regular files under the root (symlinks not followed).
    pub used_by_root: u64,
}

/// The limits every call checks.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_file_bytes: u64,
    max_walk_entries: u64,
    walk_timeout: Duration,
    max_list_entries: u64,
    usage_refresh: Duration,
}

/// One configured root.
#[derive(Debug)]
struct Root {
    name: String,
    /// Canonical directory.
    path: PathBuf,
    quota: RootQuota,
    /// What the root holds, as last measured and kept up to date since.
    usage: Mutex<Option<Usage>>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    bytes: u64,
    files: u64,
    measured: Instant,
}

/// The files capability; one per process, shared by every task.
#[derive(Debug)]
pub struct FilesService {
    roots: BTreeMap<String, Arc<Root>>,
    limits: Limits,
}

/// How every path under a root is resolved: never above the directory it
/// starts from, never through a symlink.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);

impl FilesService {
    /// Checks that every root exists and is a directory, creating missing
    /// ones, remembers their canonical paths, and checks that the kernel
    /// provides `openat2` (Linux 5.6 or newer).
    pub fn new(config: FilesConfig) -> anyhow::Result<Self> {
        for name in config.quotas.keys() {
            if !config.roots.contains_key(name) {
                anyhow::bail!("files quota for '{name}', which is not a configured root");
            }
        }
        if config.max_walk_entries == 0 || config.max_list_entries == 0 {
            anyhow::bail!("files max_walk_entries and max_list_entries must be at least 1");
        }
        let mut roots = BTreeMap::new();
        for (name, dir) in config.roots {
            if name.is_empty() {
                anyhow::bail!("files root with an empty name");
            }
            std::fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!("files root '{name}': cannot create {}: {e}", dir.display())
            })?;
            let canonical = std::fs::canonicalize(&dir).map_err(|e| {
                anyhow::anyhow!("files root '{name}': cannot resolve {}: {e}", dir.display())
            })?;
            if !canonical.is_dir() {
                anyhow::bail!("files root '{name}': {} is not a directory", dir.display());
            }
            let root = Root {
                quota: config.quotas.get(&name).copied().unwrap_or_default(),
                name: name.clone(),
                path: canonical,
                usage: Mutex::new(None),
            };
            let fd = root
                .open()
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
            match rustix::fs::openat2(
                &fd,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                RESOLVE,
            ) {
                Ok(_) => {}
                Err(e) => anyhow::bail!(
                    "files root '{name}': openat2 failed ({e}); the files capability needs Linux 5.6 \
                     or newer, with openat2 allowed by any seccomp filter"
                ),
            }
            tracing::debug!(root = %name, dir = %root.path.display(), quota = ?root.quota, "files root");
            roots.insert(name, Arc::new(root));
        }
        Ok(Self {
            roots,
            limits: Limits {
                max_file_bytes: config.max_file_bytes,
                max_walk_entries: config.max_walk_entries,
                walk_timeout: config.walk_timeout,
                max_list_entries: config.max_list_entries,
                usage_refresh: config.usage_refresh,
            },
        })
    }

    /// The configured root names.
    pub fn root_names(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(String::as_str)
    }

    fn root(&self, grant: &FilesGrant, name: &str, write: bool) -> Result<Arc<Root>, HostError> {
        let access = grant.roots.get(name).ok_or_else(|| {
            HostError::denied(format!("files root '{name}' is not granted to this task"))
        })?;
        if write && *access != Access::ReadWrite {
            return Err(HostError::denied(format!(
                "files root '{name}' is granted read-only"
            )));
        }
        self.roots.get(name).cloned().ok_or_else(|| {
            HostError::unavailable(format!(
                "files root '{name}' is not configured on this runner"
            ))
        })
    }

    /// Writes a file, creating parent directories; replaces an existing
    /// file atomically (write to a temporary file, then rename).
    pub async fn write(
        &self,
        grant: &FilesGrant,
        root: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<(), HostError> {
        traced(CAPABILITY, "write", async {
            let root = self.root(grant, root, true)?;
            if data.len() as u64 > self.limits.max_file_bytes {
                return Err(HostError::invalid(format!(
                    "file of {} bytes exceeds the limit of {} bytes",
                    data.len(),
                    self.limits.max_file_bytes
                )));
            }
            let rel = path.to_owned();
            let limits = self.limits;
            blocking(move || write_blocking(&root, &limits, &rel, &data)).await
        })
        .await
    }

    /// Reads a whole regular file.
    pub async fn read(
        &self,
        grant: &FilesGrant,
        root: &str,
        path: &str,
    ) -> Result<Vec<u8>, HostError> {
        traced(CAPABILITY, "read", async {
            let root = self.root(grant, root, false)?;
            let rel = path.to_owned();
            let max = self.limits.max_file_bytes;
            blocking(move || read_blocking(&root, &rel, max)).await
        })
        .await
    }

    /// Lists a directory (`""` for the root), not recursively, sorted by
    /// path. Symlinks are listed as they are (not followed).
    pub async fn list(
        &self,
        grant: &FilesGrant,
        root: &str,
        dir: &str,
    ) -> Result<Vec<Entry>, HostError> {
        traced(CAPABILITY, "list", async {
            let root = self.root(grant, root, false)?;
            let rel = dir.to_owned();
            let limits = self.limits;
            blocking(move || list_blocking(&root, &limits, &rel)).await
        })
        .await
    }

    /// Deletes a file (or a symlink itself, never its target). Returns
    /// whether it existed.
    pub async fn delete(
        &self,
        grant: &FilesGrant,
        root: &str,
        path: &str,
    ) -> Result<bool, HostError> {
        traced(CAPABILITY, "delete", async {
            let root = self.root(grant, root, true)?;
            let rel = path.to_owned();
            blocking(move || delete_blocking(&root, &rel)).await
        })
        .await
    }

    /// Deletes the regular files under `root` whose relative path matches
    /// `glob` and whose modification time is more than `older_than` ago.
    /// With `dry_run`, deletes nothing and reports what it would delete.
    /// A dry run needs only read access.
    pub async fn cleanup(
        &self,
        grant: &FilesGrant,
        root: &str,
        glob: &str,
        older_than: Duration,
        dry_run: bool,
    ) -> Result<CleanupReport, HostError> {
        traced(CAPABILITY, "cleanup", async {
            let root = self.root(grant, root, !dry_run)?;
            let matcher = globset::GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map_err(|e| HostError::invalid(format!("bad glob '{glob}': {e}")))?
                .compile_matcher();
            let prefix: Vec<String> = literal_prefix(glob)
                .into_iter()
                .map(str::to_owned)
                .collect();
            let cutoff = SystemTime::now().checked_sub(older_than);
            let limits = self.limits;
            blocking(move || {
                let report = CleanupReport {
                    deleted: Vec::new(),
                    bytes_freed: 0,
                    dry_run,
                };
                let Some(cutoff) = cutoff else {
                    return Ok(report);
                };
                cleanup_blocking(&root, &limits, &prefix, &matcher, cutoff, report)
            })
            .await
        })
        .await
    }

    /// Size and free space of the filesystem holding `root`, and the bytes
    /// in the root's files.
    pub async fn disk_usage(&self, grant: &FilesGrant, root: &str) -> Result<DiskUsage, HostError> {
        traced(CAPABILITY, "disk_usage", async {
            let root = self.root(grant, root, false)?;
            let limits = self.limits;
            blocking(move || {
                let fd = root.open()?;
                let st = rustix::fs::fstatvfs(&fd)
                    .map_err(|e| HostError::transient(format!("statvfs failed: {e}")))?;
                let frsize = st.f_frsize;
                let usage = root.measure(fd, &limits, "disk_usage")?;
                *root.usage() = Some(usage);
                Ok(DiskUsage {
                    total_bytes: st.f_blocks.saturating_mul(frsize),
                    free_bytes: st.f_bavail.saturating_mul(frsize),
                    used_by_root: usage.bytes,
                })
            })
            .await
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HostError::transient(format!("file operation did not complete: {e}")))?
}

impl Root {
    /// The root directory, opened for this call.
    fn open(&self) -> Result<OwnedFd, HostError> {
        rustix::fs::open(
            &self.path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            HostError::transient(format!(
                "files root '{}': cannot open {}: {e}",
                self.name,
                self.path.display()
            ))
        })
    }

    fn usage(&self) -> MutexGuard<'_, Option<Usage>> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Walks the whole root (from its open descriptor `fd`) and counts its
    /// regular files.
    fn measure(&self, fd: OwnedFd, limits: &Limits, what: &str) -> Result<Usage, HostError> {
        let mut usage = Usage {
            bytes: 0,
            files: 0,
            measured: Instant::now(),
        };
        let mut budget = Budget::new(limits);
        walk(fd, "", &mut budget, &mut |_, _, _, st| {
            if file_type(st) == FileType::RegularFile {
                usage.bytes += size(st);
                usage.files += 1;
            }
        })
        .map_err(|stop| stop.error(&format!("{what} of files root '{}'", self.name)))?;
        Ok(usage)
    }

    /// Adds `bytes` and `files` (either may be negative) to the usage, when
    /// it is measured.
    fn adjust(&self, bytes: i64, files: i64) {
        if let Some(u) = self.usage().as_mut() {
            u.bytes = u.bytes.saturating_add_signed(bytes);
            u.files = u.files.saturating_add_signed(files);
        }
    }

    /// Checks that replacing a file of `old` bytes (`None`: no file) with
    /// `new` bytes keeps the root within its quota, and counts it. The
    /// returned charge is taken back unless committed.
    fn charge(
        &self,
        limits: &Limits,
        rel: &str,
        old: Option<u64>,
        new: u64,
    ) -> Result<Charge<'_>, HostError> {
        let bytes = i64::try_from(new).unwrap_or(i64::MAX)
            - i64::try_from(old.unwrap_or(0)).unwrap_or(i64::MAX);
        let files = i64::from(old.is_none());
        if !self.quota.is_limited() {
            self.adjust(bytes, files);
            return Ok(Charge {
                root: self,
                bytes,
                files,
                committed: false,
            });
        }
        let mut guard = self.usage();
        let current = match *guard {
            Some(u) if u.measured.elapsed() < limits.usage_refresh => u,
            _ => {
                let fd = self.open()?;
                let measured = self.measure(fd, limits, "measuring the quota")?;
                *guard = Some(measured);
                measured
            }
        };
        let bytes_after = current.bytes.saturating_add_signed(bytes);
        let files_after = current.files.saturating_add_signed(files);
        if let Some(max) = self.quota.max_bytes
            && bytes > 0
            && bytes_after > max
        {
            return Err(HostError::permanent(format!(
                "files root '{}' is over its quota: writing '{rel}' ({new} bytes) would bring it \
                 to {bytes_after} bytes, more than its quota of {max} bytes",
                self.name
            )));
        }
        if let Some(max) = self.quota.max_files
            && files > 0
            && files_after > max
        {
            return Err(HostError::permanent(format!(
                "files root '{}' is over its quota: writing '{rel}' would make it hold \
                 {files_after} files, more than its quota of {max} files",
                self.name
            )));
        }
        if let Some(u) = guard.as_mut() {
            u.bytes = bytes_after;
            u.files = files_after;
        }
        Ok(Charge {
            root: self,
            bytes,
            files,
            committed: false,
        })
    }
}

/// A write counted in its root's usage; dropped uncommitted (the write
/// failed), it is taken back.
struct Charge<'a> {
    root: &'a Root,
    bytes: i64,
    files: i64,
    committed: bool,
}

impl Charge<'_> {
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Charge<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.root.adjust(-self.bytes, -self.files);
        }
    }
}

/// Opens `path` (relative, already checked) beneath `dir`, refusing any
/// symlink on the way and at the end (`ELOOP`).
fn open_beneath<P: rustix::path::Arg>(
    dir: BorrowedFd<'_>,
    path: P,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    // RESOLVE_NO_SYMLINKS refuses a trailing symlink too. O_NOFOLLOW says
    // so again for files; with O_DIRECTORY it would turn that ELOOP into
    // an ENOTDIR, hiding that a symlink was refused.
    let nofollow = if flags.contains(OFlags::DIRECTORY) {
        OFlags::empty()
    } else {
        OFlags::NOFOLLOW
    };
    rustix::fs::openat2(dir, path, flags | nofollow | OFlags::CLOEXEC, mode, RESOLVE)
}

/// Opens the directory `parts` names beneath `dir` (`dir` itself when
/// `parts` is empty).
fn open_dir(dir: BorrowedFd<'_>, parts: &[&str]) -> Result<OwnedFd, Errno> {
    let path = if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    };
    open_beneath(
        dir,
        &path,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
}

/// What is at `name` in `dir`, without following a symlink; `None` if
/// nothing.
fn stat_at(dir: BorrowedFd<'_>, name: &str) -> Result<Option<Stat>, Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates (as needed) and opens the directories `parents` beneath `root`.
/// `NOENT` means a directory on the way went meanwhile (emptied by a
/// delete or cleanup, which removes it): the caller tries again.
fn make_dirs(root: BorrowedFd<'_>, parents: &[&str]) -> Result<OwnedFd, Errno> {
    match open_dir(root, parents) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e),
    }
    let mut current = open_dir(root, &[])?;
    for part in parents {
        let next = match open_dir(current.as_fd(), &[*part]) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                match rustix::fs::mkdirat(&current, *part, Mode::from_bits_truncate(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                open_dir(current.as_fd(), &[*part])?
            }
            Err(e) => return Err(e),
        };
        current = next;
    }
    Ok(current)
}

fn write_blocking(root: &Root, limits: &Limits, rel: &str, data: &[u8]) -> Result<(), HostError> {
    let parts = split_path(rel, false)?;
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| HostError::invalid("empty path"))?;
    let root_fd = root.open()?;
    // What the write replaces, looked at before anything is created: a
    // write the quota refuses leaves no directories behind.
    let old = match open_dir(root_fd.as_fd(), parents) {
        Ok(dir) => match stat_at(dir.as_fd(), last).map_err(|e| fs_error(rel, e))? {
            None => None,
            Some(st) => match file_type(&st) {
                FileType::Directory => {
                    return Err(HostError::invalid(format!("'{rel}' is a directory")));
                }
                FileType::Symlink => return Err(symlink_refused(rel)),
                FileType::RegularFile => Some(size(&st)),
                // A FIFO, socket or device node is replaced (not opened).
                _ => None,
            },
        },
        Err(Errno::NOENT) => None,
        Err(e) => return Err(fs_error(rel, e)),
    };
    let charge = root.charge(limits, rel, old, data.len() as u64)?;
    let tmp = format!(".runner-{}.tmp", uuid::Uuid::now_v7().simple());
    // A delete or cleanup that emptied a directory removes it: one made or
    // opened here can go before the file is created in it. Made again.
    let mut attempts = 0;
    let (dir, created) = loop {
        attempts += 1;
        let dir = match make_dirs(root_fd.as_fd(), parents) {
            Ok(dir) => dir,
            Err(Errno::NOENT) if attempts < 5 => continue,
            Err(e) => return Err(fs_error(rel, e)),
        };
        let created = open_beneath(
            dir.as_fd(),
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            Mode::from_bits_truncate(0o666),
        );
        match created {
            Err(Errno::NOENT) if attempts < 5 => continue,
            created => break (dir, created),
        }
    };
    let written = created
        .map_err(io::Error::from)
        .and_then(|fd| File::from(fd).write_all(data))
        .and_then(|()| rustix::fs::renameat(&dir, &tmp, &dir, *last).map_err(io::Error::from));
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
        return Err(io_error(rel, e));
    }
    charge.commit();
    Ok(())
}

fn read_blocking(root: &Root, rel: &str, max: u64) -> Result<Vec<u8>, HostError> {
    let parts = split_path(rel, false)?;
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| HostError::invalid("empty path"))?;
    let root_fd = root.open()?;
    let dir = open_dir(root_fd.as_fd(), parents).map_err(|e| fs_error(rel, e))?;
    let Some(st) = stat_at(dir.as_fd(), last).map_err(|e| fs_error(rel, e))? else {
        return Err(HostError::invalid(format!("'{rel}' does not exist")));
    };
    check_readable(rel, &st, max)?;
    // Non-blocking: should the name now be a FIFO, opening it returns at
    // once (and the fstat below refuses it).
    let fd = open_beneath(
        dir.as_fd(),
        *last,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| fs_error(rel, e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| fs_error(rel, e))?;
    check_readable(rel, &st, max)?;
    let mut data = Vec::with_capacity(size(&st) as usize);
    File::from(fd)
        .take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| io_error(rel, e))?;
    if data.len() as u64 > max {
        return Err(HostError::invalid(format!(
            "'{rel}' has more than the limit of {max} bytes"
        )));
    }
    Ok(data)
}

/// Refuses anything but a regular file of at most `max` bytes.
fn check_readable(rel: &str, st: &Stat, max: u64) -> Result<(), HostError> {
    match file_type(st) {
        FileType::RegularFile => {}
        FileType::Directory => return Err(HostError::invalid(format!("'{rel}' is a directory"))),
        FileType::Symlink => return Err(symlink_refused(rel)),
        other => {
            return Err(HostError::invalid(format!(
                "'{rel}' is not a regular file (it is a {})",
                type_name(other)
            )));
        }
    }
    if size(st) > max {
        return Err(HostError::invalid(format!(
            "'{rel}' has {} bytes, more than the limit of {max} bytes",
            size(st)
        )));
    }
    Ok(())
}

fn list_blocking(root: &Root, limits: &Limits, rel: &str) -> Result<Vec<Entry>, HostError> {
    let parts = split_path(rel, true)?;
    let root_fd = root.open()?;
    let dir = open_dir(root_fd.as_fd(), &parts).map_err(|e| fs_error(rel, e))?;
    let prefix = parts.join("/");
    let mut budget = Budget::new(limits);
    budget.max_entries = limits.max_list_entries;
    budget.setting = "max_list_entries";
    let names = read_names(dir.as_fd(), &mut budget)
        .map_err(|stop| stop.error(&format!("list of '{rel}' in files root '{}'", root.name)))?;
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let st = match rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Deleted since it was read.
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(fs_error(rel, e)),
        };
        entries.push(entry(join(&prefix, &name), &st));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

fn delete_blocking(root: &Root, rel: &str) -> Result<bool, HostError> {
    let parts = split_path(rel, false)?;
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| HostError::invalid("empty path"))?;
    let root_fd = root.open()?;
    let dir = match open_dir(root_fd.as_fd(), parents) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(fs_error(rel, e)),
    };
    let Some(st) = stat_at(dir.as_fd(), last).map_err(|e| fs_error(rel, e))? else {
        return Ok(false);
    };
    if file_type(&st) == FileType::Directory {
        return Err(HostError::invalid(format!("'{rel}' is a directory")));
    }
    match rustix::fs::unlinkat(&dir, *last, AtFlags::empty()) {
        Ok(()) => {
            if file_type(&st) == FileType::RegularFile {
                root.adjust(-(size(&st) as i64), -1);
            }
            remove_empty_dirs(root_fd.as_fd(), parents);
            Ok(true)
        }
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(fs_error(rel, e)),
    }
}

/// Removes the directory `parents` names if it is empty, then its parent
/// if that is empty in turn, and so on up to the root (kept): directories
/// exist to hold files, and a task cannot remove one itself. Left behind,
/// emptied directories would pile up (a write makes them at no charge)
/// until every quota walk of the root failed. A write that wants one back
/// makes it again.
fn remove_empty_dirs(root: BorrowedFd<'_>, parents: &[&str]) {
    for depth in (1..=parents.len()).rev() {
        let Ok(parent) = open_dir(root, &parents[..depth - 1]) else {
            return;
        };
        // Not empty (ENOTEMPTY), or gone: the rest stays.
        if rustix::fs::unlinkat(&parent, parents[depth - 1], AtFlags::REMOVEDIR).is_err() {
            return;
        }
    }
}

fn cleanup_blocking(
    root: &Root,
    limits: &Limits,
    prefix: &[String],
    matcher: &globset::GlobMatcher,
    cutoff: SystemTime,
    mut report: CleanupReport,
) -> Result<CleanupReport, HostError> {
    let root_fd = root.open()?;
    let parts: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let start = match open_dir(root_fd.as_fd(), &parts) {
        Ok(fd) => fd,
        // Nothing there (or a symlink, never entered): nothing matches.
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(report),
        Err(e) => return Err(fs_error(&parts.join("/"), e)),
    };
    let dry_run = report.dry_run;
    let mut files = 0i64;
    // Directories files were deleted from: removed after the walk if
    // that left them empty.
    let mut emptied = std::collections::BTreeSet::new();
    let mut budget = Budget::new(limits);
    let walked = walk(
        start,
        &parts.join("/"),
        &mut budget,
        &mut |dir, name, rel, st| {
            if file_type(st) != FileType::RegularFile || !matcher.is_match(rel) {
                return;
            }
            if modified(st) >= cutoff {
                return;
            }
            if !dry_run {
                match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::NOENT) => return,
                    Err(e) => {
                        tracing::warn!(root = %root.name, path = rel, error = %e, "cleanup could not delete a file");
                        return;
                    }
                }
                files += 1;
                if let Some((parent, _)) = rel.rsplit_once('/') {
                    emptied.insert(parent.to_owned());
                }
            }
            report.bytes_freed += size(st);
            report.deleted.push(entry(rel.to_owned(), st));
        },
    );
    if !dry_run {
        root.adjust(-(report.bytes_freed as i64), -files);
        // Deepest first, so that a parent is looked at once its children
        // are gone (a name that is not UTF-8 is shown, not opened, and
        // stops its branch).
        for dir in emptied.iter().rev() {
            let parts: Vec<&str> = dir.split('/').collect();
            remove_empty_dirs(root_fd.as_fd(), &parts);
        }
    }
    if let Err(stop) = walked {
        let done = if dry_run {
            "would have deleted"
        } else {
            "had deleted"
        };
        let err = stop.error(&format!("cleanup of files root '{}'", root.name));
        let message = format!(
            "{}; it {done} {} files ({} bytes) by then",
            err.message(),
            report.deleted.len(),
            report.bytes_freed
        );
        return Err(match err {
            HostError::Transient(_) => HostError::transient(message),
            _ => HostError::permanent(message),
        });
    }
    report.deleted.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// The leading components of `glob` that hold no pattern (`a/b` of
/// `a/b/**/*.log`); only paths under them can match.
fn literal_prefix(glob: &str) -> Vec<&str> {
    let components: Vec<&str> = glob.split('/').collect();
    let dirs = &components[..components.len().saturating_sub(1)];
    dirs.iter()
        .take_while(|c| {
            !c.is_empty()
                && **c != "."
                && **c != ".."
                && !c.contains(['*', '?', '[', ']', '{', '}', '\\', '!'])
        })
        .copied()
        .collect()
}

/// How much of the tree one call may still visit.
struct Budget {
    max_entries: u64,
    /// The setting `max_entries` comes from, for the error.
    setting: &'static str,
    visited: u64,
    started: Instant,
    timeout: Duration,
}

/// Why a walk stopped early.
#[derive(Debug)]
enum Stop {
    Entries(u64, &'static str),
    Time(Duration),
    Io(Errno),
}

impl Stop {
    /// The error a call gets, `what` naming the call.
    fn error(&self, what: &str) -> HostError {
        match self {
            Stop::Entries(max, setting) => HostError::permanent(format!(
                "{what} stopped after visiting {max} entries (the runner's files {setting})"
            )),
            Stop::Time(t) => HostError::transient(format!(
                "{what} stopped after {}s (the runner's files walk_timeout)",
                t.as_secs()
            )),
            Stop::Io(e) => HostError::transient(format!("{what}: {e}")),
        }
    }
}

impl Budget {
    fn new(limits: &Limits) -> Self {
        Self {
            max_entries: limits.max_walk_entries,
            setting: "max_walk_entries",
            visited: 0,
            started: Instant::now(),
            timeout: limits.walk_timeout,
        }
    }

    fn tick(&mut self) -> Result<(), Stop> {
        self.visited += 1;
        if self.visited > self.max_entries {
            return Err(Stop::Entries(self.max_entries, self.setting));
        }
        if self.started.elapsed() > self.timeout {
            return Err(Stop::Time(self.timeout));
        }
        Ok(())
    }
}

/// The names in the directory `dir` (without `.` and `..`), each counted
/// against `budget`.
fn read_names(dir: BorrowedFd<'_>, budget: &mut Budget) -> Result<Vec<CString>, Stop> {
    let mut names = Vec::new();
    for item in Dir::read_from(dir).map_err(Stop::Io)? {
        let item = item.map_err(Stop::Io)?;
        let name = item.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        budget.tick()?;
        names.push(name.to_owned());
    }
    Ok(names)
}

/// What `walk` shows of each entry: the directory's descriptor, the
/// entry's name in it, its `/`-separated path relative to the root, and
/// its `lstat`.
type Visit<'a> = dyn FnMut(BorrowedFd<'_>, &CStr, &str, &Stat) + 'a;

/// Visits every entry under the directory `start` (whose path relative to
/// the root is `prefix`) depth-first, never through a symlink: each
/// subdirectory is entered by opening its path relative to `start` with
/// `openat2` (so the walk holds two descriptors at most, however deep the
/// tree). A directory that cannot be read is skipped with a warning; one
/// that is gone, or was swapped for a symlink, since it was listed is
/// skipped. Stops when `budget` runs out.
fn walk(
    start: OwnedFd,
    prefix: &str,
    budget: &mut Budget,
    visit: &mut Visit<'_>,
) -> Result<(), Stop> {
    // Directories still to enter: their path relative to `start` (raw
    // bytes: names need not be UTF-8) and relative to the root (shown).
    let mut pending: Vec<(Vec<u8>, String)> = vec![(Vec::new(), prefix.to_owned())];
    while let Some((path, shown)) = pending.pop() {
        let opened = if path.is_empty() {
            None
        } else {
            match open_beneath(
                start.as_fd(),
                OsStr::from_bytes(&path),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            ) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::debug!(dir = shown, error = %e, "not entering a directory");
                    continue;
                }
            }
        };
        let dir = opened.as_ref().map_or(start.as_fd(), |fd| fd.as_fd());
        let names = match read_names(dir, budget) {
            Ok(names) => names,
            Err(Stop::Io(e)) => {
                tracing::warn!(dir = shown, error = %e, "skipping an unreadable directory");
                continue;
            }
            Err(stop) => return Err(stop),
        };
        for name in names {
            let Ok(st) = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            let rel = join(&shown, &name);
            visit(dir, name.as_c_str(), rel.as_str(), &st);
            if file_type(&st) == FileType::Directory {
                let mut sub = path.clone();
                if !sub.is_empty() {
                    sub.push(b'/');
                }
                sub.extend_from_slice(name.to_bytes());
                pending.push((sub, rel));
            }
        }
    }
    Ok(())
}

fn join(prefix: &str, name: &CStr) -> String {
    let name = name.to_string_lossy();
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Splits a relative path into its components, refusing absolute paths and
/// `..` outright; `.` and empty components are dropped.
/// Most components of a path a task names (directories and the file): a
/// write creates the missing directories, which no quota counts.
pub const MAX_DEPTH: usize = 32;

fn split_path(rel: &str, allow_empty: bool) -> Result<Vec<&str>, HostError> {
    if rel.contains('\0') {
        return Err(HostError::invalid("path contains a NUL byte"));
    }
    if rel.starts_with('/') || rel.starts_with('\\') {
        return Err(HostError::denied(format!(
            "absolute path '{rel}' is refused; paths are relative to the root"
        )));
    }
    let parts: Vec<&str> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(HostError::denied(format!("'..' in '{rel}' is refused")));
    }
    if parts.len() > MAX_DEPTH {
        return Err(HostError::invalid(format!(
            "'{rel}' is {} levels deep, more than {MAX_DEPTH}",
            parts.len()
        )));
    }
    if parts.is_empty() && !allow_empty {
        return Err(HostError::invalid("empty path"));
    }
    Ok(parts)
}

fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::RegularFile => "regular file",
        _ => "special file",
    }
}

fn size(st: &Stat) -> u64 {
    u64::try_from(st.st_size).unwrap_or(0)
}

fn modified(st: &Stat) -> SystemTime {
    #[allow(clippy::unnecessary_cast)] // the field types vary by target
    let (secs, nanos) = (st.st_mtime as i64, st.st_mtime_nsec as u32);
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nanos),
        Err(_) => UNIX_EPOCH,
    }
}

fn entry(path: String, st: &Stat) -> Entry {
    let is_dir = file_type(st) == FileType::Directory;
    let modified_ms = modified(st)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Entry {
        path,
        size: if is_dir { 0 } else { size(st) },
        modified_ms,
        is_dir,
    }
}

fn symlink_refused(rel: &str) -> HostError {
    HostError::denied(format!(
        "'{rel}' is or goes through a symlink; symlinks under a files root are refused"
    ))
}

fn fs_error(rel: &str, e: Errno) -> HostError {
    io_error(rel, e.into())
}

fn io_error(rel: &str, e: io::Error) -> HostError {
    use io::ErrorKind as K;
    match e.raw_os_error().map(Errno::from_raw_os_error) {
        // RESOLVE_NO_SYMLINKS and O_NOFOLLOW say ELOOP; RESOLVE_BENEATH
        // says EXDEV for a path that would leave the root.
        Some(Errno::LOOP) => return symlink_refused(rel),
        Some(Errno::XDEV) => {
            return HostError::denied(format!("'{rel}' leads out of the root"));
        }
        Some(Errno::NOSYS) => {
            return HostError::unavailable(
                "files need openat2 (Linux 5.6 or newer), which this kernel does not provide",
            );
        }
        _ => {}
    }
    match e.kind() {
        K::NotFound => HostError::invalid(format!("'{rel}' does not exist")),
        K::NotADirectory => HostError::invalid(format!("'{rel}': a parent is not a directory")),
        K::IsADirectory => HostError::invalid(format!("'{rel}' is a directory")),
        K::PermissionDenied | K::ReadOnlyFilesystem => {
            HostError::permanent(format!("'{rel}': the filesystem refused access: {e}"))
        }
        K::InvalidFilename => HostError::invalid(format!("'{rel}': {e}")),
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => {
            HostError::permanent(format!("'{rel}': {e}"))
        }
        _ => HostError::transient(format!("'{rel}': {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::literal_prefix;

    #[test]
    fn literal_prefix_stops_at_the_first_pattern() {
        assert_eq!(literal_prefix("app/2026/*.log"), ["app", "2026"]);
        assert_eq!(literal_prefix("app/**/*.log"), ["app"]);
        assert_eq!(literal_prefix("*.log"), Vec::<&str>::new());
        assert_eq!(literal_prefix("a/{b,c}/x"), ["a"]);
        assert_eq!(literal_prefix("a/./b/x"), ["a"]);
        assert_eq!(literal_prefix("a//b/x"), ["a"]);
        assert_eq!(literal_prefix("a/b"), ["a"]);
    }
}
