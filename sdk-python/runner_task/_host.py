"""Calls into the generated bindings: their errors become ours."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from .errors import (
    Denied,
    HostError,
    Invalid,
    NotDeclared,
    Permanent,
    TimeUp,
    Transient,
    Unavailable,
)

CAPABILITIES = ("kv", "mail", "http", "pdf", "files", "jobs")
"""What a task may declare in `@task(needs=...)`; `context` (the job, its
progress and log) is always there."""

_KINDS: dict[str, type[HostError]] = {
    "HostError_Denied": Denied,
    "HostError_Invalid": Invalid,
    "HostError_Transient": Transient,
    "HostError_Permanent": Permanent,
    "HostError_Unavailable": Unavailable,
}


@contextmanager
def call(capability: str, name: str) -> Iterator[None]:
    """Runs a host call: a `host-error` becomes a `HostError` naming the
    call, and a capability missing from the component's world becomes
    `NotDeclared`."""
    try:
        yield
    except ImportError as e:
        if e.name is not None and e.name.startswith("wit_world"):
            raise NotDeclared(capability) from None
        raise
    except Exception as e:
        value = getattr(e, "value", None)
        kind = _KINDS.get(type(value).__name__)
        if kind is None:
            raise
        message = str(getattr(value, "value", ""))
        if kind is Denied and message.startswith("soft time limit"):
            kind = TimeUp
        raise kind(message, f"{capability}.{name}") from None


def to_ms(what: str, value: float | timedelta | None) -> int | None:
    """Seconds (or a timedelta) as whole milliseconds, checked."""
    if value is None:
        return None
    secs = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(secs) or secs < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, not {value!r}")
    ms = math.ceil(secs * 1000)
    if ms >= 1 << 64:
        raise ValueError(f"{what} is too large: {value!r}")
    return ms


def to_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    """Text is stored as UTF-8."""
    return data.encode() if isinstance(data, str) else bytes(data)
