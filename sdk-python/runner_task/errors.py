"""How a run, or a call to the runner, fails."""

from __future__ import annotations


class Retry(Exception):
    """Raise to end the run as a transient failure: the runner tries the job
    again later, per its retry policy (backoff with jitter), until the
    retries are used up. `message` may be any object, such as the
    exception that made the run give up (`raise Retry(e)`): it is kept as
    its `str()`."""

    def __init__(self, message: object = "retry") -> None:
        self.message = str(message)
        super().__init__(self.message)


class Fail(Exception):
    """Raise to end the run as a permanent failure: the job fails at once,
    without a retry. `message`, as for `Retry`, is kept as its `str()`."""

    def __init__(self, message: object = "failed") -> None:
        self.message = str(message)
        super().__init__(self.message)


class HostError(Exception):
    """A call to a capability (kv, mail, http, pdf, files, jobs) failed.

    Every capability fails with one of the subclasses below, so a task can
    decide in one place whether to retry: left uncaught, a `Transient`
    error retries the job and any other fails it.
    """

    kind = "error"

    def __init__(self, message: str, call: str = "") -> None:
        super().__init__(f"{call}: {self.kind}: {message}" if call else f"{self.kind}: {message}")
        self.message = message
        self.call = call

    @property
    def is_transient(self) -> bool:
        """Whether retrying later may succeed."""
        return isinstance(self, Transient)


class Denied(HostError):
    """The task's grant does not allow this call (capability not granted,
    host not allowed, sender not allowed, root not granted)."""

    kind = "denied"


class TimeUp(Denied):
    """The job's soft time limit has passed: every capability is denied from
    now on. Finish up before the hard limit stops the run."""

    kind = "time up"


class Invalid(HostError):
    """The arguments were wrong (bad address, path or URL; value too large)."""

    kind = "invalid"


class Transient(HostError):
    """A temporary failure (connection failed, timeout, SMTP 4xx)."""

    kind = "transient"


class Permanent(HostError):
    """A permanent failure from the other side (SMTP 5xx, quota exceeded)."""

    kind = "permanent"


class Unavailable(HostError):
    """This runner does not provide the capability."""

    kind = "unavailable"


class NotDeclared(Exception):
    """The task called a capability it did not declare in
    `@task(needs=[...])`, so its component does not import it."""

    def __init__(self, capability: str) -> None:
        super().__init__(
            f"the task uses `{capability}` but does not declare it: "
            f'add it to @task(needs=["{capability}", ...]) and build again'
        )
        self.capability = capability
