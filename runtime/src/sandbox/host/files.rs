//! `runner:task/files`: files under operator-configured named roots.

use std::time::Duration;

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::files::{self, CleanupReport, DiskUsageReport, Entry};
use crate::sandbox::run::RunState;

/// The file area one run talks to, already bound to the roots the task was
/// granted (and whether each is read-only). It refuses absolute paths, `..`
/// and symlinks out of a root.
pub trait FileStore: Send + Sync {
    fn write(
        &self,
        root: String,
        path: String,
        data: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), HostError>>;

    fn read(&self, root: String, path: String) -> BoxFuture<'_, Result<Vec<u8>, HostError>>;

    fn list(&self, root: String, dir: String) -> BoxFuture<'_, Result<Vec<Entry>, HostError>>;

    /// Deletes a file; true if it existed.
    fn delete(&self, root: String, path: String) -> BoxFuture<'_, Result<bool, HostError>>;

    fn cleanup(
        &self,
        root: String,
        glob: String,
        older_than: Duration,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<CleanupReport, HostError>>;

    fn disk_usage(&self, root: String) -> BoxFuture<'_, Result<DiskUsageReport, HostError>>;
}

const CAPABILITY: &str = "files";

impl files::Host for RunState {
    async fn write(&mut self, root: String, path: String, data: Vec<u8>) -> GuestResult<()> {
        self.host_call(CAPABILITY, "write", |host| &host.files)
            .run(|store| async move { store.write(root, path, data).await })
            .await
    }

    async fn read(&mut self, root: String, path: String) -> GuestResult<Vec<u8>> {
        self.host_call(CAPABILITY, "read", |host| &host.files)
            .run(|store| async move { store.read(root, path).await })
            .await
    }

    async fn list(&mut self, root: String, dir: String) -> GuestResult<Vec<Entry>> {
        self.host_call(CAPABILITY, "list", |host| &host.files)
            .run(|store| async move { store.list(root, dir).await })
            .await
    }

    async fn delete(&mut self, root: String, path: String) -> GuestResult<bool> {
        self.host_call(CAPABILITY, "delete", |host| &host.files)
            .run(|store| async move { store.delete(root, path).await })
            .await
    }

    async fn cleanup(
        &mut self,
        root: String,
        glob: String,
        older_than_secs: u64,
        dry_run: bool,
    ) -> GuestResult<CleanupReport> {
        let older_than = Duration::from_secs(older_than_secs);
        self.host_call(CAPABILITY, "cleanup", |host| &host.files)
            .run(|store| async move { store.cleanup(root, glob, older_than, dry_run).await })
            .await
    }

    async fn disk_usage(&mut self, root: String) -> GuestResult<DiskUsageReport> {
        self.host_call(CAPABILITY, "disk_usage", |host| &host.files)
            .run(|store| async move { store.disk_usage(root).await })
            .await
    }
}
