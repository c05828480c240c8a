"""A small key-value store, namespaced per task name. Needs `"kv"`.

Values are bytes; `str` values are stored as UTF-8. TTLs are in seconds (or
a `timedelta`).
"""

from __future__ import annotations

from datetime import timedelta

from ._host import call, to_bytes, to_ms

Value = bytes | bytearray | memoryview | str
Ttl = float | timedelta | None


def set_nx(key: str, value: Value, ttl: Ttl = None) -> bool:
    """Stores `value` under `key` only if the key does not exist yet: True
    if it was stored. The "already done today" guard."""
    ttl_ms = to_ms("ttl", ttl)
    with call("kv", "set_nx"):
        from wit_world.imports import kv as wit

        return wit.set_nx(key, to_bytes(value), ttl_ms)


def set(key: str, value: Value, ttl: Ttl = None) -> None:
    """Stores `value` under `key`, replacing any previous value."""
    ttl_ms = to_ms("ttl", ttl)
    with call("kv", "set"):
        from wit_world.imports import kv as wit

        wit.set(key, to_bytes(value), ttl_ms)


def get(key: str) -> bytes | None:
    """The value stored under `key`, if any."""
    with call("kv", "get"):
        from wit_world.imports import kv as wit

        return wit.get(key)


def get_str(key: str) -> str | None:
    """The value stored under `key` as UTF-8 text, if any."""
    value = get(key)
    return None if value is None else value.decode()


def delete(key: str) -> bool:
    """Deletes `key`: True if it existed."""
    with call("kv", "delete"):
        from wit_world.imports import kv as wit

        return wit.delete(key)
