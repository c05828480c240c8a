//! The files service on a real temp tree.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use runner_host_fns::HostError;
use runner_host_fns::files::{Access, FilesConfig, FilesGrant, FilesService};

struct Tree {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    service: FilesService,
}

impl Tree {
    /// `base/reports`, `base/logs` as roots, and `base/outside` (not a root)
    /// holding a secret.
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().to_path_buf();
        fs::create_dir_all(base.join("outside")).expect("mkdir");
        fs::write(base.join("outside/secret.txt"), b"secret").expect("write");
        let config = FilesConfig::new([
            ("reports".to_owned(), base.join("reports")),
            ("logs".to_owned(), base.join("logs")),
        ]);
        let service = FilesService::new(config).expect("service");
        Self {
            _tmp: tmp,
            base,
            service,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }
}

fn rw() -> FilesGrant {
    FilesGrant::new([("reports", Access::ReadWrite), ("logs", Access::ReadWrite)])
}

fn write_aged(path: &Path, data: &[u8], age: Duration) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, data).expect("write");
    let mtime = SystemTime::now() - age;
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn write_read_list_delete_round_trip() {
    let t = Tree::new();
    let g = rw();
    t.service
        .write(
            &g,
            "reports",
            "2026/11/daily.pdf",
            b"%PDF-1.7 hello".to_vec(),
        )
        .await
        .expect("write");
    assert_eq!(
        fs::read(t.path("reports/2026/11/daily.pdf")).expect("on disk"),
        b"%PDF-1.7 hello"
    );
    assert_eq!(
        t.service
            .read(&g, "reports", "2026/11/daily.pdf")
            .await
            .expect("read"),
        b"%PDF-1.7 hello"
    );
    // Replacing keeps one file and leaves no temporary file behind.
    t.service
        .write(&g, "reports", "2026/11/daily.pdf", b"v2".to_vec())
        .await
        .expect("rewrite");
    let listed = t
        .service
        .list(&g, "reports", "2026/11")
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, "2026/11/daily.pdf");
    assert_eq!(listed[0].size, 2);
    assert!(!listed[0].is_dir);
    assert!(listed[0].modified_ms > 0);

    let top = t.service.list(&g, "reports", "").await.expect("list root");
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].path, "2026");
    assert!(top[0].is_dir);

    assert!(
        t.service
            .delete(&g, "reports", "2026/11/daily.pdf")
            .await
            .expect("delete")
    );
    assert!(
        !t.service
            .delete(&g, "reports", "2026/11/daily.pdf")
            .await
            .expect("delete again")
    );
    assert!(matches!(
        t.service.read(&g, "reports", "2026/11/daily.pdf").await,
        Err(HostError::Invalid(_))
    ));
}

#[tokio::test]
async fn grants_are_enforced() {
    let t = Tree::new();
    let ro = FilesGrant::new([("reports", Access::ReadOnly)]);
    fs::write(t.path("reports/a.txt"), b"a").expect("write");

    assert_eq!(
        t.service.read(&ro, "reports", "a.txt").await.expect("read"),
        b"a"
    );
    assert!(matches!(
        t.service
            .write(&ro, "reports", "b.txt", b"b".to_vec())
            .await,
        Err(HostError::Denied(_))
    ));
    assert!(matches!(
        t.service.delete(&ro, "reports", "a.txt").await,
        Err(HostError::Denied(_))
    ));
    assert!(matches!(
        t.service
            .cleanup(&ro, "reports", "*", Duration::ZERO, false)
            .await,
        Err(HostError::Denied(_))
    ));
    // A dry run only reads.
    t.service
        .cleanup(&ro, "reports", "*", Duration::ZERO, true)
        .await
        .expect("dry run on a read-only root");
    // Not granted at all.
    assert!(matches!(
        t.service.read(&ro, "logs", "x").await,
        Err(HostError::Denied(_))
    ));
    // Granted but not configured on this runner.
    let ghost = FilesGrant::new([("ghost", Access::ReadWrite)]);
    assert!(matches!(
        t.service.read(&ghost, "ghost", "x").await,
        Err(HostError::Unavailable(_))
    ));
    assert!(fs::read(t.path("reports/b.txt")).is_err());
}

#[tokio::test]
async fn dot_dot_and_absolute_paths_are_refused() {
    let t = Tree::new();
    let g = rw();
    for bad in [
        "../outside/secret.txt",
        "a/../../outside/secret.txt",
        "..",
        "x/..",
    ] {
        assert!(
            matches!(
                t.service.read(&g, "reports", bad).await,
                Err(HostError::Denied(_))
            ),
            "read {bad}"
        );
        assert!(
            matches!(
                t.service.write(&g, "reports", bad, b"x".to_vec()).await,
                Err(HostError::Denied(_))
            ),
            "write {bad}"
        );
    }
    let abs = t.path("outside/secret.txt");
    let abs = abs.to_str().expect("utf-8 path");
    assert!(matches!(
        t.service.read(&g, "reports", abs).await,
        Err(HostError::Denied(_))
    ));
    assert!(matches!(
        t.service.delete(&g, "reports", abs).await,
        Err(HostError::Denied(_))
    ));
    assert!(matches!(
        t.service.list(&g, "reports", "/").await,
        Err(HostError::Denied(_))
    ));
    assert!(matches!(
        t.service.write(&g, "reports", "", b"x".to_vec()).await,
        Err(HostError::Invalid(_))
    ));
    assert_eq!(
        fs::read(t.path("outside/secret.txt")).expect("secret intact"),
        b"secret"
    );
}

#[tokio::test]
async fn symlinks_out_of_the_root_are_refused() {
    let t = Tree::new();
    let g = rw();
    symlink(t.path("outside"), t.path("reports/escape")).expect("dir symlink");
    symlink(t.path("outside/secret.txt"), t.path("reports/secret-link")).expect("file symlink");
    // Relative symlink climbing out.
    symlink("../outside/secret.txt", t.path("reports/rel-link")).expect("relative symlink");
    // A symlink to another root is still outside this root.
    symlink(t.path("logs"), t.path("reports/to-logs")).expect("root symlink");

    for bad in [
        "escape/secret.txt",
        "secret-link",
        "rel-link",
        "to-logs/x.log",
    ] {
        assert!(
            matches!(
                t.service.read(&g, "reports", bad).await,
                Err(HostError::Denied(_))
            ),
            "read {bad}"
        );
        assert!(
            matches!(
                t.service.write(&g, "reports", bad, b"pwned".to_vec()).await,
                Err(HostError::Denied(_))
            ),
            "write {bad}"
        );
    }
    assert!(matches!(
        t.service.list(&g, "reports", "escape").await,
        Err(HostError::Denied(_))
    ));
    assert!(matches!(
        t.service
            .write(&g, "reports", "escape/new/file.txt", b"x".to_vec())
            .await,
        Err(HostError::Denied(_))
    ));
    assert_eq!(
        fs::read(t.path("outside/secret.txt")).expect("secret intact"),
        b"secret"
    );
    assert!(!t.path("outside/new").exists());

    // Deleting a symlink removes the link, never its target.
    assert!(
        t.service
            .delete(&g, "reports", "secret-link")
            .await
            .expect("delete link")
    );
    assert!(t.path("outside/secret.txt").exists());

    // A symlink that stays inside the root is refused too: whether it
    // does could only be checked by resolving it, and what it points to
    // may change right after.
    fs::create_dir_all(t.path("reports/real")).expect("mkdir");
    fs::write(t.path("reports/real/in.txt"), b"inside").expect("write");
    symlink(t.path("reports/real"), t.path("reports/alias")).expect("inner symlink");
    symlink("real/in.txt", t.path("reports/in-link")).expect("inner file symlink");
    for through in ["alias/in.txt", "in-link"] {
        assert!(
            matches!(
                t.service.read(&g, "reports", through).await,
                Err(HostError::Denied(_))
            ),
            "read {through}"
        );
        assert!(
            matches!(
                t.service.write(&g, "reports", through, b"x".to_vec()).await,
                Err(HostError::Denied(_))
            ),
            "write {through}"
        );
    }
    assert!(matches!(
        t.service.list(&g, "reports", "alias").await,
        Err(HostError::Denied(_))
    ));
    assert_eq!(
        t.service
            .read(&g, "reports", "real/in.txt")
            .await
            .expect("read"),
        b"inside"
    );
}

#[tokio::test]
async fn cleanup_deletes_exactly_the_old_matching_files() {
    let t = Tree::new();
    let g = rw();
    let logs = t.path("logs");
    write_aged(&logs.join("app/old1.log"), &[1; 100], 10 * DAY);
    write_aged(&logs.join("app/deep/old2.log"), &[2; 250], 8 * DAY);
    write_aged(&logs.join("app/new.log"), &[3; 50], DAY);
    write_aged(&logs.join("app/old.txt"), &[4; 70], 10 * DAY);
    write_aged(&logs.join("top-old.log"), &[5; 30], 10 * DAY);
    // Old files outside the root, reachable only through symlinks.
    write_aged(&t.path("outside/ancient.log"), &[6; 10], 100 * DAY);
    symlink(t.path("outside"), logs.join("app/linked-dir")).expect("dir symlink");
    symlink(t.path("outside/ancient.log"), logs.join("app/linked.log")).expect("file symlink");

    let dry = t
        .service
        .cleanup(&g, "logs", "app/**/*.log", 7 * DAY, true)
        .await
        .expect("dry run");
    assert!(dry.dry_run);
    let paths: Vec<&str> = dry.deleted.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["app/deep/old2.log", "app/old1.log"]);
    assert_eq!(dry.bytes_freed, 350);
    // Nothing was deleted by the dry run.
    assert!(logs.join("app/old1.log").exists());
    assert!(logs.join("app/deep/old2.log").exists());

    let real = t
        .service
        .cleanup(&g, "logs", "app/**/*.log", 7 * DAY, false)
        .await
        .expect("cleanup");
    assert!(!real.dry_run);
    assert_eq!(real.deleted, dry.deleted);
    assert_eq!(real.bytes_freed, 350);
    assert!(!logs.join("app/old1.log").exists());
    assert!(!logs.join("app/deep/old2.log").exists());
    for kept in ["app/new.log", "app/old.txt", "top-old.log"] {
        assert!(logs.join(kept).exists(), "{kept} must be kept");
    }
    // Symlinks are neither followed nor deleted.
    assert!(logs.join("app/linked.log").symlink_metadata().is_ok());
    assert!(t.path("outside/ancient.log").exists());

    // `*` does not cross directories.
    let top = t
        .service
        .cleanup(&g, "logs", "*.log", 7 * DAY, false)
        .await
        .expect("top");
    let paths: Vec<&str> = top.deleted.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["top-old.log"]);

    assert!(matches!(
        t.service.cleanup(&g, "logs", "app/[", DAY, true).await,
        Err(HostError::Invalid(_))
    ));
}

#[tokio::test]
async fn disk_usage_reports_filesystem_and_root() {
    let t = Tree::new();
    let g = rw();
    fs::create_dir_all(t.path("reports/a")).expect("mkdir");
    fs::write(t.path("reports/a/one"), vec![0u8; 1000]).expect("write");
    fs::write(t.path("reports/two"), vec![0u8; 234]).expect("write");
    // The big file outside must not be counted through the symlink.
    fs::write(t.path("outside/big"), vec![0u8; 100_000]).expect("write");
    symlink(t.path("outside"), t.path("reports/link")).expect("symlink");

    let usage = t.service.disk_usage(&g, "reports").await.expect("usage");
    assert_eq!(usage.used_by_root, 1234);
    assert!(usage.total_bytes > 0);
    assert!(usage.free_bytes <= usage.total_bytes);
}

#[tokio::test]
async fn size_limit_and_bad_names_are_invalid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = FilesConfig::new([("reports".to_owned(), tmp.path().join("reports"))]);
    config.max_file_bytes = 10;
    let service = FilesService::new(config).expect("service");
    let g = FilesGrant::new([("reports", Access::ReadWrite)]);
    assert!(matches!(
        service.write(&g, "reports", "big", vec![0; 11]).await,
        Err(HostError::Invalid(_))
    ));
    fs::write(tmp.path().join("reports/big-on-disk"), [0u8; 11]).expect("write");
    assert!(matches!(
        service.read(&g, "reports", "big-on-disk").await,
        Err(HostError::Invalid(_))
    ));
    let long = "x".repeat(300);
    assert!(matches!(
        service.write(&g, "reports", &long, b"x".to_vec()).await,
        Err(HostError::Invalid(_))
    ));
    assert!(matches!(
        service
            .write(&g, "reports", "nul\0byte", b"x".to_vec())
            .await,
        Err(HostError::Invalid(_))
    ));
    // A directory cannot be read, written over or deleted as a file.
    fs::create_dir_all(tmp.path().join("reports/dir")).expect("mkdir");
    assert!(matches!(
        service.read(&g, "reports", "dir").await,
        Err(HostError::Invalid(_))
    ));
    assert!(matches!(
        service.write(&g, "reports", "dir", b"x".to_vec()).await,
        Err(HostError::Invalid(_))
    ));
    assert!(matches!(
        service.delete(&g, "reports", "dir").await,
        Err(HostError::Invalid(_))
    ));
    // No temporary files are left behind by failed writes.
    let leftovers: Vec<_> = fs::read_dir(tmp.path().join("reports"))
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

/// Whoever can write into a root swaps a directory of it with a symlink to
/// a directory outside, over and over, while delete, cleanup and write run:
/// nothing outside the root may ever be deleted or created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_directory_for_a_symlink_cannot_escape_the_root() {
    use rustix::fs::{Mode, OFlags, RenameFlags};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let t = Tree::new();
    let g = rw();
    let root = t.path("logs");
    let outside = t.path("outside");
    fs::remove_file(outside.join("secret.txt")).expect("rm");
    fs::write(outside.join("victim.log"), b"victim").expect("victim");
    fs::create_dir(root.join("sub")).expect("mkdir");
    // Never emptied, so never removed: the swaps need it.
    fs::write(root.join("sub/keep.txt"), b"keep").expect("keep");
    symlink(&outside, root.join("alt")).expect("symlink");
    // The real directory, whatever it is called at the moment.
    let real = fs::File::open(root.join("sub")).expect("open sub");

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let stop = stop.clone();
        let root = fs::File::open(&root).expect("open root");
        move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(&root, "sub", &root, "alt", RenameFlags::EXCHANGE)
                    .expect("exchange");
                swaps += 1;
            }
            swaps
        }
    });

    let started = std::time::Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < Duration::from_secs(3) && outside.join("victim.log").exists() {
        // The file the calls aim at, back in the real directory.
        drop(
            rustix::fs::openat(
                &real,
                "victim.log",
                OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .expect("recreate"),
        );
        let _ = t.service.delete(&g, "logs", "sub/victim.log").await;
        let _ = t
            .service
            .cleanup(&g, "logs", "sub/*.log", Duration::ZERO, false)
            .await;
        let _ = t
            .service
            .write(&g, "logs", "sub/planted.log", b"x".to_vec())
            .await;
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(
        outside.join("victim.log").exists(),
        "a file outside the root was deleted (round {rounds}, {swaps} swaps)"
    );
    let mut left: Vec<String> = fs::read_dir(&outside)
        .expect("list outside")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["victim.log"], "files were created outside the root");
    assert!(rounds > 100, "only {rounds} rounds ran");
}

/// A FIFO (or device, socket) under a root is refused at once: opening or
/// reading it must not block the call (nor a blocking thread) forever.
#[tokio::test]
async fn reading_a_fifo_is_refused_at_once() {
    use rustix::fs::{FileType, Mode, OFlags};

    let t = Tree::new();
    let g = rw();
    let pipe = t.path("reports/pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &pipe,
        FileType::Fifo,
        Mode::from_bits_truncate(0o644),
        0,
    )
    .expect("mkfifo");
    let read = tokio::time::timeout(
        Duration::from_secs(3),
        t.service.read(&g, "reports", "pipe"),
    )
    .await;
    let Ok(read) = read else {
        // Let the stuck blocking thread go, so the runtime can shut down.
        let _ = rustix::fs::open(&pipe, OFlags::WRONLY | OFlags::NONBLOCK, Mode::empty());
        panic!("reading a FIFO blocked");
    };
    assert!(
        matches!(&read, Err(HostError::Invalid(m)) if m.contains("not a regular file")),
        "{read:?}"
    );
}

/// A [`FilesService`] on `base/reports` and `base/logs`, configured the way
/// `runner.toml` would, with `extra` appended to `[host.files]`.
fn service_from_toml(base: &Path, extra: &str) -> FilesService {
    let config: FilesConfig = toml::from_str(&format!(
        "roots = {{ reports = {:?}, logs = {:?} }}\n{extra}",
        base.join("reports"),
        base.join("logs"),
    ))
    .expect("config");
    FilesService::new(config).expect("service")
}

/// A write the quota refuses creates no directories, and a path deeper
/// than the cap is refused before anything is made. Before, every write
/// made its directories first, which no quota counts and no task can
/// remove: a task could fill a root with thousands of them per call until
/// every quota walk of the root failed.
#[tokio::test]
async fn a_refused_write_leaves_no_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    fs::create_dir_all(base.join("reports")).expect("mkdir");
    let service = service_from_toml(base, "[quotas]\nreports = { max_files = 1 }\n");
    let g = rw();
    service
        .write(&g, "reports", "a.bin", vec![0; 10])
        .await
        .expect("the one file");
    let over = service
        .write(&g, "reports", "new/deeper/b.bin", vec![0; 10])
        .await;
    assert!(
        matches!(&over, Err(HostError::Permanent(m)) if m.contains("1 files")),
        "{over:?}"
    );
    assert!(!base.join("reports/new").exists(), "a directory was made");
    let deep = format!("{}x.bin", "d/".repeat(runner_host_fns::files::MAX_DEPTH));
    let refused = service.write(&g, "logs", &deep, vec![0; 1]).await;
    assert!(
        matches!(&refused, Err(HostError::Invalid(m)) if m.contains("levels deep")),
        "{refused:?}"
    );
    assert!(!base.join("logs/d").exists(), "a directory was made");
    // At the cap: written.
    let at_cap = format!(
        "{}x.bin",
        "d/".repeat(runner_host_fns::files::MAX_DEPTH - 1)
    );
    service
        .write(&g, "logs", &at_cap, vec![0; 1])
        .await
        .expect("32 levels");
    assert!(base.join("logs").join(&at_cap).exists());
}

#[tokio::test]
async fn a_root_quota_caps_bytes_and_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    fs::create_dir_all(base.join("reports/old")).expect("mkdir");
    // Already there before the service starts: counted by the first walk.
    fs::write(base.join("reports/old/a.bin"), [0u8; 400]).expect("write");
    let service = service_from_toml(
        base,
        "[quotas]\nreports = { max_bytes = 1000, max_files = 3 }\n",
    );
    let g = rw();

    service
        .write(&g, "reports", "b.bin", vec![0; 500])
        .await
        .expect("900 of 1000 bytes");
    let over = service.write(&g, "reports", "c.bin", vec![0; 200]).await;
    assert!(
        matches!(&over, Err(HostError::Permanent(m)) if m.contains("'reports'") && m.contains("1000")),
        "{over:?}"
    );
    assert!(!base.join("reports/c.bin").exists());
    // Replacing a file counts only the difference.
    service
        .write(&g, "reports", "b.bin", vec![0; 100])
        .await
        .expect("replace 500 by 100: 500 of 1000");
    service
        .write(&g, "reports", "c.bin", vec![0; 450])
        .await
        .expect("950 of 1000");
    // Three files: a fourth is refused even though it is empty.
    let fourth = service.write(&g, "reports", "d.bin", Vec::new()).await;
    assert!(
        matches!(&fourth, Err(HostError::Permanent(m)) if m.contains("'reports'") && m.contains("3 files")),
        "{fourth:?}"
    );
    // Deleting frees both.
    assert!(
        service
            .delete(&g, "reports", "c.bin")
            .await
            .expect("delete")
    );
    service
        .write(&g, "reports", "d.bin", vec![0; 450])
        .await
        .expect("after a delete");
    // So does cleanup.
    let freed = service
        .cleanup(&g, "reports", "old/*.bin", Duration::ZERO, false)
        .await
        .expect("cleanup");
    assert_eq!(freed.bytes_freed, 400);
    service
        .write(&g, "reports", "e.bin", vec![0; 400])
        .await
        .expect("after a cleanup: 950 of 1000");
    // Another root has no quota.
    service
        .write(&g, "logs", "big.bin", vec![0; 5000])
        .await
        .expect("no quota on logs");
    // A quota for a root that does not exist is a configuration error.
    let bad: FilesConfig = toml::from_str(&format!(
        "roots = {{ reports = {:?} }}\n[quotas]\nreprots = {{ max_bytes = 1 }}\n",
        base.join("reports")
    ))
    .expect("config");
    assert!(FilesService::new(bad).is_err());
}

#[tokio::test]
async fn tree_walks_and_listings_are_bounded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    for i in 0..100 {
        write_aged(&base.join(format!("logs/many/{i}.log")), b"x", 10 * DAY);
    }
    for i in 0..5 {
        write_aged(&base.join(format!("logs/few/{i}.log")), b"x", 10 * DAY);
    }
    let service = service_from_toml(base, "max_walk_entries = 50\nmax_list_entries = 20\n");
    let g = rw();

    let all = service.cleanup(&g, "logs", "**/*.log", DAY, true).await;
    assert!(
        matches!(&all, Err(HostError::Permanent(m)) if m.contains("50 entries")),
        "{all:?}"
    );
    let usage = service.disk_usage(&g, "logs").await;
    assert!(
        matches!(&usage, Err(HostError::Permanent(m)) if m.contains("50 entries")),
        "{usage:?}"
    );
    let listed = service.list(&g, "logs", "many").await;
    assert!(
        matches!(&listed, Err(HostError::Permanent(m)) if m.contains("20 entries")),
        "{listed:?}"
    );
    // A glob whose leading directories are literal walks only those.
    let few = service
        .cleanup(&g, "logs", "few/*.log", DAY, false)
        .await
        .expect("a small subtree");
    assert_eq!(few.deleted.len(), 5);
    // `few`, emptied, went with its files.
    let left = service.list(&g, "logs", "").await.expect("list");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].path, "many");
}

/// Deleting a file removes the directories it leaves empty, up to the
/// root, and so does a cleanup. Before, they stayed, and a task could not
/// remove them: writing and deleting a deep file over and over filled the
/// root with empty directories until every quota walk of it failed, and
/// every write to it with them.
#[tokio::test]
async fn directories_a_delete_or_cleanup_empties_are_removed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    fs::create_dir_all(base.join("reports")).expect("mkdir");
    let service = service_from_toml(
        base,
        "max_walk_entries = 50\nusage_refresh = 0\n[quotas]\nreports = { max_files = 100 }\n",
    );
    let g = rw();
    for i in 0..10 {
        let path = format!("d{i}/a/b/c/d/f.txt");
        service
            .write(&g, "reports", &path, b"x".to_vec())
            .await
            .expect("write");
        assert!(service.delete(&g, "reports", &path).await.expect("delete"));
    }
    service
        .write(&g, "reports", "ok.txt", b"x".to_vec())
        .await
        .expect("a write after the deletes");
    let left: Vec<_> = fs::read_dir(base.join("reports"))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["ok.txt"], "{left:?}");

    // A directory that still holds a file stays, and so do its parents.
    for path in ["y/keep/k.txt", "y/old/1.log", "y/old/deeper/2.log"] {
        service
            .write(&g, "reports", path, b"x".to_vec())
            .await
            .expect("write");
    }
    assert!(
        service
            .delete(&g, "reports", "y/keep/missing.txt")
            .await
            .is_ok()
    );
    let report = service
        .cleanup(&g, "reports", "y/old/**/*.log", Duration::ZERO, false)
        .await
        .expect("cleanup");
    assert_eq!(report.deleted.len(), 2, "{report:?}");
    assert!(!base.join("reports/y/old").exists(), "y/old was left");
    assert!(base.join("reports/y/keep/k.txt").exists());
    // Written again where a directory went: made again.
    service
        .write(&g, "reports", "y/old/deeper/3.log", b"x".to_vec())
        .await
        .expect("write");
}
