//! Files under operator-configured named roots (e.g. `reports`, `logs`).
//! Needs the `files` grant for each root, read-only or read-write.
//!
//! Paths are relative to the root with `/` separators; absolute paths, `..`
//! and symlinks (any symlink under a root) are [`HostError::Denied`].
//!
//! ```no_run
//! use std::time::Duration;
//! use runner_sdk::{files, TaskError};
//!
//! fn rotate() -> Result<u64, TaskError> {
//!     files::write("reports", "2026/11/summary.txt", "all good")?;
//!     let report = files::cleanup("logs", "**/*.log", Duration::from_secs(30 * 86_400), false)?;
//!     Ok(report.bytes_freed)
//! }
//! ```

use std::time::Duration;

use crate::HostError;
use crate::bindings::runner::task::files as wit;

/// A file or directory under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the root.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub modified_ms: u64,
    /// Whether this is a directory.
    pub is_dir: bool,
}

impl From<wit::Entry> for Entry {
    fn from(e: wit::Entry) -> Self {
        Entry {
            path: e.path,
            size: e.size,
            modified_ms: e.modified_ms,
            is_dir: e.is_dir,
        }
    }
}

/// What a [`cleanup`] deleted, or with `dry_run`, would delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// The files deleted (or that would be).
    pub deleted: Vec<Entry>,
    /// Their total size.
    pub bytes_freed: u64,
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
}

impl From<wit::CleanupReport> for CleanupReport {
    fn from(r: wit::CleanupReport) -> Self {
        CleanupReport {
            deleted: r.deleted.into_iter().map(Into::into).collect(),
            bytes_freed: r.bytes_freed,
            dry_run: r.dry_run,
        }
    }
}

/// Space on the filesystem that holds a root, and what the root uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Free space on the filesystem.
    pub free_bytes: u64,
    /// Bytes used by the files under the root.
    pub used_by_root: u64,
}

impl From<wit::DiskUsageReport> for DiskUsage {
    fn from(u: wit::DiskUsageReport) -> Self {
        DiskUsage {
            total_bytes: u.total_bytes,
            free_bytes: u.free_bytes,
            used_by_root: u.used_by_root,
        }
    }
}

/// Writes a file, creating parent directories; replaces an existing file.
pub fn write(root: &str, path: &str, data: impl AsRef<[u8]>) -> Result<(), HostError> {
    Ok(wit::write(root, path, data.as_ref())?)
}

/// Reads a whole file.
pub fn read(root: &str, path: &str) -> Result<Vec<u8>, HostError> {
    Ok(wit::read(root, path)?)
}

/// Reads a whole file as UTF-8 text; a file that is not UTF-8 is an
/// [`HostError::Invalid`].
pub fn read_string(root: &str, path: &str) -> Result<String, HostError> {
    String::from_utf8(read(root, path)?)
        .map_err(|e| HostError::Invalid(format!("{root}:{path} is not UTF-8: {e}")))
}

/// Lists a directory (`""` for the root itself), not recursively.
pub fn list(root: &str, dir: &str) -> Result<Vec<Entry>, HostError> {
    Ok(wit::list(root, dir)?.into_iter().map(Into::into).collect())
}

/// Deletes a file. Returns `true` if it existed. A directory it leaves
/// empty is removed too, and so is each parent left empty in turn (the
/// root stays): directories hold files, and a write makes them again.
pub fn delete(root: &str, path: &str) -> Result<bool, HostError> {
    Ok(wit::delete(root, path)?)
}

/// Deletes the files under `root` whose relative path matches `glob` (e.g.
/// `**/*.log`) and that were last modified more than `older_than` ago. Never
/// follows symlinks. Directories it leaves empty are removed, as by
/// [`delete`]. With `dry_run`, deletes nothing and reports what it would
/// delete.
pub fn cleanup(
    root: &str,
    glob: &str,
    older_than: Duration,
    dry_run: bool,
) -> Result<CleanupReport, HostError> {
    Ok(wit::cleanup(root, glob, whole_secs_up(older_than), dry_run)?.into())
}

/// `d` in whole seconds, rounded up: the host counts ages in seconds, and
/// rounding down would delete files younger than asked (500 ms became 0:
/// every file).
fn whole_secs_up(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Space on the filesystem that holds `root`, and what the root uses.
pub fn disk_usage(root: &str) -> Result<DiskUsage, HostError> {
    Ok(wit::disk_usage(root)?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cleanup_age_is_never_rounded_down() {
        assert_eq!(whole_secs_up(Duration::from_millis(500)), 1);
        assert_eq!(whole_secs_up(Duration::from_secs_f64(1.9)), 2);
        assert_eq!(whole_secs_up(Duration::from_secs(3)), 3);
        assert_eq!(whole_secs_up(Duration::ZERO), 0);
        assert_eq!(whole_secs_up(Duration::MAX), u64::MAX);
    }

    #[test]
    fn cleanup_report_converts() {
        let report = CleanupReport::from(wit::CleanupReport {
            deleted: vec![wit::Entry {
                path: "a.log".into(),
                size: 10,
                modified_ms: 5,
                is_dir: false,
            }],
            bytes_freed: 10,
            dry_run: true,
        });
        assert_eq!(
            report,
            CleanupReport {
                deleted: vec![Entry {
                    path: "a.log".into(),
                    size: 10,
                    modified_ms: 5,
                    is_dir: false
                }],
                bytes_freed: 10,
                dry_run: true,
            }
        );
    }

    #[test]
    fn disk_usage_converts() {
        let usage = DiskUsage::from(wit::DiskUsageReport {
            total_bytes: 100,
            free_bytes: 40,
            used_by_root: 7,
        });
        assert_eq!(
            usage,
            DiskUsage {
                total_bytes: 100,
                free_bytes: 40,
                used_by_root: 7
            }
        );
    }
}
