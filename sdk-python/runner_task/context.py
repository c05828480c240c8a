"""The job being run, its progress, its log and its time left.

Always available: no `needs` entry is required.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class JobInfo:
    """The job being run."""

    id: str
    """The job's id (a UUIDv7, sortable by creation time)."""
    attempt: int
    """1 on the first run, 2 on the first retry, and so on."""
    max_retries: int
    """How many retries the job's policy allows in total."""
    queue: str
    """The queue the job was taken from."""
    task: str
    """The task name the job was enqueued for (empty when run by hash)."""
    schedule: str | None
    """The beat that enqueued this job, if a schedule did."""
    scheduled_for: str | None
    """For scheduled jobs: the due time of the fire, RFC 3339 in UTC."""

    @property
    def can_retry(self) -> bool:
        """Whether raising `Retry` will run the job again."""
        return self.attempt <= self.max_retries


class Level(Enum):
    """Severity of a log line."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


@dataclass(frozen=True)
class Deadline:
    """What is left of the run's budget."""

    time_left_ms: int
    """Milliseconds until the hard time limit stops the run."""
    soft_time_left_ms: int | None
    """Milliseconds until the soft time limit, if the job has one (0 once it
    has passed: capabilities are then denied)."""
    fuel_left: int | None
    """Fuel left, when fuel is metered."""


_job: JobInfo | None = None


def job() -> JobInfo:
    """The job being run."""
    # Every run is a fresh instance of the component: a module global lives
    # for one run, and the job does not change during it.
    global _job
    if _job is not None:
        return _job
    from wit_world.imports import context as wit

    j = wit.job()
    _job = JobInfo(
        id=j.id,
        attempt=j.attempt,
        max_retries=j.max_retries,
        queue=j.queue,
        task=j.task,
        schedule=j.schedule,
        scheduled_for=j.scheduled_for,
    )
    return _job


def progress(done: int, total: int, message: str | None = None) -> None:
    """Reports progress: `done` of `total` units, with an optional short
    message, pushed to whoever watches the job (API events, dashboard).
    The counts are `int`s: a `float` (`50.0`) is a `TypeError`."""
    from wit_world.imports import context as wit

    for count in (done, total):
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"progress takes two int counts, not a {type(count).__name__}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress's message is a str or None, not a {type(message).__name__}")
    if done < 0 or total < 0 or done >= 1 << 64 or total >= 1 << 64:
        raise ValueError(f"progress takes two counts from 0 to 2^64-1, not {done}, {total}")
    wit.progress(done, total, message)


def log(level: Level | str, message: str) -> None:
    """Writes a line into the job's log. `level` is a `Level` or its name
    ("info", any case); `message` is a `str`. Another type is a
    `TypeError` (an unknown name a `ValueError`)."""
    from wit_world.imports import context as wit

    if not isinstance(level, (Level, str)):
        raise TypeError(f"log's level is a Level or str, not a {type(level).__name__}")
    if not isinstance(message, str):
        raise TypeError(f"log's message is a str, not a {type(message).__name__}")
    name = level.value if isinstance(level, Level) else Level(level.lower()).value
    wit.log(wit.Level[name.upper()], message)


def trace(message: str) -> None:
    log(Level.TRACE, message)


def debug(message: str) -> None:
    log(Level.DEBUG, message)


def info(message: str) -> None:
    log(Level.INFO, message)


def warn(message: str) -> None:
    log(Level.WARN, message)


def error(message: str) -> None:
    log(Level.ERROR, message)


def deadline() -> Deadline:
    """How much time (and fuel) the run has left, so that a task can stop
    cleanly before its limits stop it."""
    from wit_world.imports import context as wit

    d = wit.deadline()
    return Deadline(
        time_left_ms=d.time_left_ms,
        soft_time_left_ms=d.soft_time_left_ms,
        fuel_left=d.fuel_left,
    )
