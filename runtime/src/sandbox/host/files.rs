//! `runner:task/files`: files under operator-configured named roots.

use std::time::Duration;

use futures::future::BoxFuture;

use super::GuestResult;
use crate::sandbox::bindings::HostError;
use crate::sandbox::bindings::runner::task::files::{self, CleanupReport, DiskUsageReport, Entry};
use crate::sandbox::run::RunState;
use anyhow::Context as _;
use runner_host_fns::files::FilesConfig;

use super::Service;
use crate::registry::TaskGrants;
use runner_host_fns::files as fns_files;
use runner_host_fns::files::{FilesGrant, FilesService};
use std::sync::Arc;

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

/// The process's [`FilesService`] under one task's roots.
struct TaskFiles {
    service: Arc<FilesService>,
    grant: FilesGrant,
}

fn entry(e: fns_files::Entry) -> Entry {
    Entry {
        path: e.path,
        size: e.size,
        modified_ms: e.modified_ms,
        is_dir: e.is_dir,
    }
}

impl FileStore for TaskFiles {
    fn write(
        &self,
        root: String,
        path: String,
        data: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), HostError>> {
        Box::pin(async move { Ok(self.service.write(&self.grant, &root, &path, data).await?) })
    }

    fn read(&self, root: String, path: String) -> BoxFuture<'_, Result<Vec<u8>, HostError>> {
        Box::pin(async move { Ok(self.service.read(&self.grant, &root, &path).await?) })
    }

    fn list(&self, root: String, dir: String) -> BoxFuture<'_, Result<Vec<Entry>, HostError>> {
        Box::pin(async move {
            let entries = self.service.list(&self.grant, &root, &dir).await?;
            Ok(entries.into_iter().map(entry).collect())
        })
    }

    fn delete(&self, root: String, path: String) -> BoxFuture<'_, Result<bool, HostError>> {
        Box::pin(async move { Ok(self.service.delete(&self.grant, &root, &path).await?) })
    }

    fn cleanup(
        &self,
        root: String,
        glob: String,
        older_than: Duration,
        dry_run: bool,
    ) -> BoxFuture<'_, Result<CleanupReport, HostError>> {
        Box::pin(async move {
            let report = self
                .service
                .cleanup(&self.grant, &root, &glob, older_than, dry_run)
                .await?;
            Ok(CleanupReport {
                deleted: report.deleted.into_iter().map(entry).collect(),
                bytes_freed: report.bytes_freed,
                dry_run: report.dry_run,
            })
        })
    }

    fn disk_usage(&self, root: String) -> BoxFuture<'_, Result<DiskUsageReport, HostError>> {
        Box::pin(async move {
            let usage = self.service.disk_usage(&self.grant, &root).await?;
            Ok(DiskUsageReport {
                total_bytes: usage.total_bytes,
                free_bytes: usage.free_bytes,
                used_by_root: usage.used_by_root,
            })
        })
    }
}

/// The process's file roots `[host.files]` describes (none without it).
pub(super) fn service(config: Option<&FilesConfig>) -> anyhow::Result<Option<Arc<FilesService>>> {
    config
        .map(|c| {
            FilesService::new(c.clone())
                .context("[host.files]")
                .map(Arc::new)
        })
        .transpose()
}

/// The file roots the task is granted, each with its access.
pub(super) fn grant(
    service: &Option<Arc<FilesService>>,
    grants: &TaskGrants,
) -> Service<dyn FileStore> {
    let grant = (!grants.files.is_empty()).then(|| FilesGrant {
        roots: grants.files.clone(),
    });
    Service::bind(service, grant.as_ref(), |service, grant| {
        Arc::new(TaskFiles {
            service,
            grant: grant.clone(),
        }) as Arc<dyn FileStore>
    })
}
