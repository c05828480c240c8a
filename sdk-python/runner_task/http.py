"""Outgoing HTTP requests (webhooks, APIs). Needs `"http"`, and the host in
the task's grant.

    r = http.post("https://hooks.example.com/x", json={"text": "done"})
    r.raise_for_status()
"""

from __future__ import annotations

import json as _json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._convert import dumps
from ._host import call, to_bytes, to_ms
from .errors import Invalid, Permanent, Transient

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
_UNSET: Any = object()


@dataclass(frozen=True)
class Response:
    """An answer, whatever its status."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive)."""
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    def text(self) -> str:
        """The body as UTF-8 (invalid bytes replaced)."""
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; `Invalid` if it is not JSON."""
        try:
            return _json.loads(self.body)
        except ValueError as e:
            raise Invalid(f"the response body is not JSON: {e}", "http.json") from None

    def raise_for_status(self) -> Response:
        """The response itself if its status is 1xx-3xx; otherwise raises,
        saying whether retrying may help: `Transient` for 408, 425, 429 and
        5xx (left uncaught the job is retried), `Permanent` for other 4xx."""
        if self.status < 400:
            return self
        message = f"HTTP {self.status}: {self.text()[:200]}"
        if self.status in (408, 425, 429) or self.status >= 500:
            raise Transient(message, "http.send")
        raise Permanent(message, "http.send")


def request(
    method: str,
    url: str,
    *,
    headers: Headers = (),
    body: bytes | str | None = None,
    json: Any = _UNSET,
    timeout: float | None = None,
) -> Response:
    """Sends a request and returns the response, whatever its status. `json`
    sends a value as JSON (with its content type), converted as a task's
    output is (dataclasses, enums); `timeout` is in seconds, capped by the
    host at the job's time left."""
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
    data = None if body is None else to_bytes(body)
    if json is not _UNSET:
        data = dumps(json, "json").encode()
        if not any(k.lower() == "content-type" for k, _ in pairs):
            pairs.append(("content-type", "application/json"))
    timeout_ms = to_ms("timeout", timeout)
    if timeout_ms is not None and timeout_ms >= 1 << 32:
        raise ValueError(f"timeout is too large: {timeout!r}")
    with call("http", "send"):
        from wit_world.imports import http as wit

        r = wit.send(
            wit.Request(
                method=method.upper(), url=url, headers=pairs, body=data, timeout_ms=timeout_ms
            )
        )
        return Response(status=r.status, headers=list(r.headers), body=bytes(r.body))


class _Call(Protocol):
    def __call__(
        self,
        url: str,
        *,
        headers: Headers = (),
        body: bytes | str | None = None,
        json: Any = _UNSET,
        timeout: float | None = None,
    ) -> Response: ...


def _method(method: str) -> _Call:
    def call(
        url: str,
        *,
        headers: Headers = (),
        body: bytes | str | None = None,
        json: Any = _UNSET,
        timeout: float | None = None,
    ) -> Response:
        return request(method, url, headers=headers, body=body, json=json, timeout=timeout)

    call.__name__ = call.__qualname__ = method.lower()
    call.__doc__ = f"`request` with method {method}."
    return call


get = _method("GET")
head = _method("HEAD")
delete = _method("DELETE")
post = _method("POST")
put = _method("PUT")
patch = _method("PATCH")
