"""The `@task` decorator and the run it stands behind."""

from __future__ import annotations

import inspect
import json
import sys
import traceback
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from ._convert import Decoder, InputError, decode, decoder, dumps
from ._host import CAPABILITIES
from .errors import Fail, HostError, NotDeclared, Retry

F = TypeVar("F", bound=Callable[..., Any])

# Strings from the task are capped before they leave it.
MAX_MESSAGE = 4000


@dataclass(frozen=True)
class TaskDef:
    fn: Callable[..., Any]
    needs: tuple[str, ...]
    input_type: Any
    param: str | None
    """The argument that takes the input, if the function takes one."""
    decoder: Decoder

    @property
    def takes_input(self) -> bool:
        return self.param is not None


_TASK: TaskDef | None = None


def _define(fn: Callable[..., Any], needs: Sequence[str]) -> None:
    global _TASK
    if isinstance(needs, str):
        raise TypeError(f'needs is a list of capabilities, e.g. ["{needs}"]')
    unknown = [n for n in needs if n not in CAPABILITIES]
    if unknown:
        raise ValueError(
            f"@task(needs=...): unknown capability {unknown[0]!r}; "
            f"the capabilities are {', '.join(CAPABILITIES)}"
        )
    if _TASK is not None and _TASK.fn is not fn:
        raise RuntimeError(
            f"one @task per component: {_TASK.fn.__qualname__} is already the task, "
            f"so {fn.__qualname__} cannot be"
        )
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(params) > 1:
        raise TypeError(
            f"a task takes its input as one argument (or none); {fn.__qualname__} takes {len(params)}"
        )
    input_type: Any = Any
    if params:
        try:
            input_type = typing.get_type_hints(fn).get(params[0].name, Any)
        except NameError:
            # The annotation names a class defined further down the module:
            # resolved on the first run instead.
            input_type = _UNRESOLVED
    dec = decoder(input_type) if input_type is not _UNRESOLVED else _unresolved
    param = params[0].name if params else None
    _TASK = TaskDef(fn, tuple(dict.fromkeys(needs)), input_type, param, dec)


_UNRESOLVED: Any = object()


def _unresolved(value: Any) -> Any:
    raise AssertionError("the input type is resolved before the first run")


def _resolved(t: TaskDef) -> TaskDef:
    """`t` with its input type resolved, once every class of the module
    exists."""
    global _TASK
    input_type = typing.get_type_hints(t.fn).get(t.param or "", Any)
    _TASK = TaskDef(t.fn, t.needs, input_type, t.param, decoder(input_type))
    return _TASK


@overload
def task(fn: F, /) -> F: ...


@overload
def task(*, needs: Sequence[str] = ()) -> Callable[[F], F]: ...


def task(fn: F | None = None, /, *, needs: Sequence[str] = ()) -> F | Callable[[F], F]:
    """Makes `fn` the component's task.

    `fn` takes the job's input (parsed from JSON into the type its argument
    is annotated with: a dataclass, a dict, a list...) or nothing, and
    returns any JSON-able value (dataclasses included). `needs` lists the
    capabilities it calls: "kv", "mail", "http", "pdf", "files", "jobs". The
    component imports just those, and the task name it is bound to must be
    granted them.

        @task(needs=["kv"])
        def run(order: Order) -> Receipt: ...
    """
    if fn is not None:
        _define(fn, ())
        return fn

    def wrap(f: F) -> F:
        _define(f, needs)
        return f

    return wrap


class Outcome:
    """How `run` ended, in the terms of the world's `task-error`."""

    RETRY = "retry"
    FAIL = "fail"


def warm_up() -> None:
    """Runs the SDK's own part of a job (JSON in, JSON out) a few times. The
    build calls it: CPython specializes the bytecode it runs, and the
    component's snapshot keeps it specialized, so no job pays for it."""
    sample = '{"s": "x", "i": 1, "f": 2.5, "l": [true, null], "o": {"k": []}}'
    for _ in range(16):
        dumps(json.loads(sample), "the sample")


def _cap(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "…"


def run(input: str) -> tuple[str, str]:
    """Runs the task on `input` (JSON text): ("ok", output JSON), or
    (Outcome.RETRY | Outcome.FAIL, message)."""
    t = _TASK
    if t is None:
        return Outcome.FAIL, "the component has no @task function"
    if t.input_type is _UNRESOLVED:
        try:
            t = _resolved(t)
        except NameError as e:
            return Outcome.FAIL, _cap(f"the task's input annotation cannot be resolved: {e}")
    try:
        try:
            raw = json.loads(input)
        except ValueError as e:
            raise Fail(f"the input is not JSON: {e}") from None
        try:
            args = [decode(raw, t.decoder, "input")] if t.takes_input else []
        except InputError as e:
            raise Fail(str(e)) from None
        result = t.fn(*args)
        try:
            return "ok", dumps(result, "the task's output")
        except (TypeError, ValueError) as e:
            raise Fail(str(e)) from None
    except Retry as e:
        return Outcome.RETRY, _cap(e.message)
    except Fail as e:
        return Outcome.FAIL, _cap(e.message)
    except HostError as e:
        # Left uncaught: worth a retry only if the failure was transient.
        return (Outcome.RETRY if e.is_transient else Outcome.FAIL), _cap(str(e))
    except NotDeclared as e:
        return Outcome.FAIL, _cap(str(e))
    except MemoryError:
        # The run reached its memory limit: let it end the run (a trap),
        # which the runner reports as `memory_limit`, as for any guest.
        raise
    except Exception as e:
        trace = traceback.format_exc()
        _log_error(trace)
        return Outcome.FAIL, _cap(f"{type(e).__name__}: {e}")


def _log_error(trace: str) -> None:
    try:
        from . import context

        context.error(_cap(trace))
    except Exception:
        pass
    print(trace, end="", flush=True, file=sys.stderr)


def resolve() -> None:
    """Resolves the task's input type now, if `@task` could not (the build
    calls it once the module is imported, so that the decoder is in the
    snapshot)."""
    t = _TASK
    if t is not None and t.input_type is _UNRESOLVED:
        _resolved(t)
