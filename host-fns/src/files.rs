//! Files under operator-configured named roots (`reports`, `logs`, ...).
//!
//! The operator maps root names to directories ([`FilesConfig`]); a task's
//! [`FilesGrant`] names the roots it may use, each read-only or read-write.
//! Paths are relative to the root with `/` separators.
//!
//! This module must never touch anything outside a root:
//! - absolute paths and `..` components are refused before the filesystem
//!   is consulted;
//! - the path is then walked one component at a time without following
//!   symlinks blindly: a symlink is followed only when its fully resolved
//!   target is still inside the root, otherwise the call is `denied`;
//! - `cleanup` and `disk_usage` walk the tree with `lstat` and never follow
//!   a symlink (a symlinked directory is not entered, a symlink is never
//!   deleted by cleanup).
//!
//! Tasks cannot create symlinks (there is no such call), so the only links
//! under a root are the operator's; the walk still checks every one of them.
//! Filesystem work runs on tokio's blocking pool.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::HostError;
use crate::trace::traced;

const CAPABILITY: &str = "files";

/// The largest file `write` accepts and `read` returns, unless configured.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Operator configuration: root name -> directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilesConfig {
    pub roots: BTreeMap<String, PathBuf>,
    /// Largest file a task may write or read in one call.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
}

fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

impl FilesConfig {
    pub fn new(roots: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        Self {
            roots: roots.into_iter().collect(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
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

/// The files capability; one per process, shared by every task.
#[derive(Debug)]
pub struct FilesService {
    /// Canonical directory of each root.
    roots: BTreeMap<String, PathBuf>,
    max_file_bytes: u64,
}

impl FilesService {
    /// Checks that every root exists and is a directory, creating missing
    /// ones, and remembers their canonical paths.
    pub fn new(config: FilesConfig) -> anyhow::Result<Self> {
        let mut roots = BTreeMap::new();
        for (name, dir) in config.roots {
            if name.is_empty() {
                anyhow::bail!("files root with an empty name");
            }
            fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!("files root '{name}': cannot create {}: {e}", dir.display())
            })?;
            let canonical = fs::canonicalize(&dir).map_err(|e| {
                anyhow::anyhow!("files root '{name}': cannot resolve {}: {e}", dir.display())
            })?;
            if !canonical.is_dir() {
                anyhow::bail!("files root '{name}': {} is not a directory", dir.display());
            }
            roots.insert(name, canonical);
        }
        Ok(Self {
            roots,
            max_file_bytes: config.max_file_bytes,
        })
    }

    /// The configured root names.
    pub fn root_names(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(String::as_str)
    }

    fn root(&self, grant: &FilesGrant, name: &str, write: bool) -> Result<PathBuf, HostError> {
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
            let root_dir = self.root(grant, root, true)?;
            if data.len() as u64 > self.max_file_bytes {
                return Err(HostError::invalid(format!(
                    "file of {} bytes exceeds the limit of {} bytes",
                    data.len(),
                    self.max_file_bytes
                )));
            }
            let rel = path.to_owned();
            blocking(move || write_blocking(&root_dir, &rel, &data)).await
        })
        .await
    }

    /// Reads a whole file.
    pub async fn read(
        &self,
        grant: &FilesGrant,
        root: &str,
        path: &str,
    ) -> Result<Vec<u8>, HostError> {
        traced(CAPABILITY, "read", async {
            let root_dir = self.root(grant, root, false)?;
            let rel = path.to_owned();
            let max = self.max_file_bytes;
            blocking(move || {
                let parts = split_path(&rel, false)?;
                let target = resolve(&root_dir, &parts, &rel)?;
                let meta = fs::metadata(&target).map_err(|e| io_error(&rel, e))?;
                if meta.is_dir() {
                    return Err(HostError::invalid(format!("'{rel}' is a directory")));
                }
                if meta.len() > max {
                    return Err(HostError::invalid(format!(
                        "'{rel}' has {} bytes, more than the limit of {max} bytes",
                        meta.len()
                    )));
                }
                fs::read(&target).map_err(|e| io_error(&rel, e))
            })
            .await
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
            let root_dir = self.root(grant, root, false)?;
            let rel = dir.to_owned();
            blocking(move || {
                let parts = split_path(&rel, true)?;
                let target = resolve(&root_dir, &parts, &rel)?;
                let prefix = parts.join("/");
                let mut entries = Vec::new();
                for item in fs::read_dir(&target).map_err(|e| io_error(&rel, e))? {
                    let item = item.map_err(|e| io_error(&rel, e))?;
                    let meta = item
                        .path()
                        .symlink_metadata()
                        .map_err(|e| io_error(&rel, e))?;
                    let name = item.file_name().to_string_lossy().into_owned();
                    let path = if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    };
                    entries.push(entry(path, &meta));
                }
                entries.sort_by(|a, b| a.path.cmp(&b.path));
                Ok(entries)
            })
            .await
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
            let root_dir = self.root(grant, root, true)?;
            let rel = path.to_owned();
            blocking(move || {
                let parts = split_path(&rel, false)?;
                let (last, parents) = parts
                    .split_last()
                    .ok_or_else(|| HostError::invalid("empty path"))?;
                let parent = resolve(&root_dir, parents, &rel)?;
                let target = parent.join(last);
                match target.symlink_metadata() {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(io_error(&rel, e)),
                    Ok(meta) if meta.is_dir() => {
                        Err(HostError::invalid(format!("'{rel}' is a directory")))
                    }
                    Ok(_) => match fs::remove_file(&target) {
                        Ok(()) => Ok(true),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                        Err(e) => Err(io_error(&rel, e)),
                    },
                }
            })
            .await
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
            let root_dir = self.root(grant, root, !dry_run)?;
            let matcher = globset::GlobBuilder::new(glob)
                .literal_separator(true)
                .build()
                .map_err(|e| HostError::invalid(format!("bad glob '{glob}': {e}")))?
                .compile_matcher();
            let cutoff = SystemTime::now().checked_sub(older_than);
            blocking(move || {
                let mut report = CleanupReport {
                    deleted: Vec::new(),
                    bytes_freed: 0,
                    dry_run,
                };
                let Some(cutoff) = cutoff else {
                    return Ok(report);
                };
                walk(&root_dir, &mut |rel, path, meta| {
                    if !meta.file_type().is_file() || !matcher.is_match(rel) {
                        return;
                    }
                    let old_enough = meta.modified().map(|m| m < cutoff).unwrap_or(false);
                    if !old_enough {
                        return;
                    }
                    if !dry_run {
                        match fs::remove_file(path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "cleanup could not delete a file");
                                return;
                            }
                        }
                    }
                    report.bytes_freed += meta.len();
                    report.deleted.push(entry(rel.to_owned(), meta));
                });
                report.deleted.sort_by(|a, b| a.path.cmp(&b.path));
                Ok(report)
            })
            .await
        })
        .await
    }

    /// Size and free space of the filesystem holding `root`, and the bytes
    /// in the root's files.
    pub async fn disk_usage(&self, grant: &FilesGrant, root: &str) -> Result<DiskUsage, HostError> {
        traced(CAPABILITY, "disk_usage", async {
            let root_dir = self.root(grant, root, false)?;
            blocking(move || {
                let st = rustix::fs::statvfs(&root_dir)
                    .map_err(|e| HostError::transient(format!("statvfs failed: {e}")))?;
                let frsize = st.f_frsize;
                let mut used = 0u64;
                walk(&root_dir, &mut |_, _, meta| {
                    if meta.file_type().is_file() {
                        used += meta.len();
                    }
                });
                Ok(DiskUsage {
                    total_bytes: st.f_blocks.saturating_mul(frsize),
                    free_bytes: st.f_bavail.saturating_mul(frsize),
                    used_by_root: used,
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

fn write_blocking(root: &Path, rel: &str, data: &[u8]) -> Result<(), HostError> {
    let parts = split_path(rel, false)?;
    let target = resolve(root, &parts, rel)?;
    if target.is_dir() {
        return Err(HostError::invalid(format!("'{rel}' is a directory")));
    }
    let parent = target
        .parent()
        .ok_or_else(|| HostError::invalid(format!("'{rel}' has no parent directory")))?;
    fs::create_dir_all(parent).map_err(|e| io_error(rel, e))?;
    let tmp = parent.join(format!(".runner-{}.tmp", uuid::Uuid::now_v7().simple()));
    if let Err(e) = fs::write(&tmp, data).and_then(|()| fs::rename(&tmp, &target)) {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(rel, e));
    }
    Ok(())
}

/// Splits a relative path into its components, refusing absolute paths and
/// `..` outright; `.` and empty components are dropped.
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
    if parts.is_empty() && !allow_empty {
        return Err(HostError::invalid("empty path"));
    }
    Ok(parts)
}

/// Walks `parts` down from the canonical `root`, one component at a time.
/// A symlink is followed only if its fully resolved target stays inside the
/// root. Components that do not exist yet are appended as they are (they
/// cannot be symlinks). Returns the real path.
fn resolve(root: &Path, parts: &[&str], shown: &str) -> Result<PathBuf, HostError> {
    let mut current = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        let next = current.join(part);
        match next.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::canonicalize(&next).map_err(|_| {
                    HostError::denied(format!(
                        "'{shown}' goes through a symlink whose target cannot be resolved"
                    ))
                })?;
                if !target.starts_with(root) {
                    return Err(HostError::denied(format!(
                        "'{shown}' leads out of the root through a symlink"
                    )));
                }
                current = target;
            }
            Ok(_) => current = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                current = next;
                for rest in &parts[i + 1..] {
                    current.push(rest);
                }
                return Ok(current);
            }
            Err(e) => return Err(io_error(shown, e)),
        }
    }
    Ok(current)
}

/// Visits every entry under `root` depth-first with `lstat` metadata,
/// never following symlinks. `visit` gets the `/`-separated relative path.
/// Unreadable directories are skipped with a warning.
fn walk(root: &Path, visit: &mut dyn FnMut(&str, &Path, &fs::Metadata)) {
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let items = match fs::read_dir(&dir) {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "skipping an unreadable directory");
                continue;
            }
        };
        for item in items.flatten() {
            let path = item.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            let name = item.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            visit(&rel, &path, &meta);
            if meta.file_type().is_dir() {
                stack.push((path, rel));
            }
        }
    }
}

fn entry(path: String, meta: &fs::Metadata) -> Entry {
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Entry {
        path,
        size: if meta.is_dir() { 0 } else { meta.len() },
        modified_ms,
        is_dir: meta.is_dir(),
    }
}

fn io_error(rel: &str, e: io::Error) -> HostError {
    use io::ErrorKind as K;
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
