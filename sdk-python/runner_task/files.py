"""Files under operator-configured named roots (e.g. `reports`). Needs
`"files"`, and the root in the task's grant.

Paths are relative to the root with `/` separators; absolute paths, `..` and
symlinks are refused.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import timedelta

from ._host import call, to_bytes


@dataclass(frozen=True)
class Entry:
    path: str
    """Relative to the root."""
    size: int
    modified_ms: int
    """Last modification, milliseconds since the Unix epoch."""
    is_dir: bool


@dataclass(frozen=True)
class CleanupReport:
    deleted: builtins.list[Entry]
    """What was deleted, or with `dry_run`, what would be."""
    bytes_freed: int
    dry_run: bool


@dataclass(frozen=True)
class DiskUsage:
    total_bytes: int
    free_bytes: int
    used_by_root: int


def write(root: str, path: str, data: bytes | str) -> None:
    """Writes a file (text as UTF-8), creating parent directories."""
    with call("files", "write"):
        from wit_world.imports import files as wit

        wit.write(root, path, to_bytes(data))


def read(root: str, path: str) -> bytes:
    """Reads a whole file."""
    with call("files", "read"):
        from wit_world.imports import files as wit

        return bytes(wit.read(root, path))


def read_text(root: str, path: str) -> str:
    """Reads a whole file as UTF-8."""
    return read(root, path).decode()


def list(root: str, dir: str = "") -> builtins.list[Entry]:
    """The entries of a directory ("" for the root), not recursively."""
    with call("files", "list"):
        from wit_world.imports import files as wit

        return [Entry(e.path, e.size, e.modified_ms, e.is_dir) for e in wit.list(root, dir)]


def delete(root: str, path: str) -> bool:
    """Deletes a file: True if it existed. Directories it leaves empty are
    removed too, up to the root (a write makes them again)."""
    with call("files", "delete"):
        from wit_world.imports import files as wit

        return wit.delete(root, path)


def cleanup(
    root: str, glob: str, older_than: float | timedelta, dry_run: bool = False
) -> CleanupReport:
    """Deletes the files under `root` matching `glob` (e.g. `logs/**/*.log`)
    last modified more than `older_than` seconds ago. Never follows symlinks.
    Directories it leaves empty are removed, as by `delete`. With `dry_run`,
    reports what it would delete."""
    secs = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
    if not secs >= 0 or secs >= 1 << 64:
        raise ValueError(f"older_than must be seconds >= 0, not {older_than!r}")
    with call("files", "cleanup"):
        from wit_world.imports import files as wit

        r = wit.cleanup(root, glob, int(secs), dry_run)
        return CleanupReport(
            deleted=[Entry(e.path, e.size, e.modified_ms, e.is_dir) for e in r.deleted],
            bytes_freed=r.bytes_freed,
            dry_run=r.dry_run,
        )


def disk_usage(root: str) -> DiskUsage:
    """Space on the filesystem that holds `root`, and what the root uses."""
    with call("files", "disk_usage"):
        from wit_world.imports import files as wit

        r = wit.disk_usage(root)
        return DiskUsage(r.total_bytes, r.free_bytes, r.used_by_root)
