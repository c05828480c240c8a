"""Write runner tasks in Python.

    from runner_task import task, Retry, Fail, context, kv

    @task(needs=["kv"])
    def run(order: Order) -> Receipt:
        context.info(f"order {order.id}")
        ...

Build the module into a component with `runner-task build app.py -o app.wasm`
and upload it to the runner. `sdk-python/README.md` is the tutorial.
"""

from . import context, files, http, jobs, kv, mail, pdf
from ._task import task
from .errors import (
    Denied,
    Fail,
    HostError,
    Invalid,
    NotDeclared,
    Permanent,
    Retry,
    TimeUp,
    Transient,
    Unavailable,
)

__all__ = [
    "task",
    "Retry",
    "Fail",
    "HostError",
    "Denied",
    "TimeUp",
    "Invalid",
    "Transient",
    "Permanent",
    "Unavailable",
    "NotDeclared",
    "context",
    "kv",
    "mail",
    "http",
    "pdf",
    "files",
    "jobs",
]
