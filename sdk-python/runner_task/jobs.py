"""Child jobs and workflows. Needs `"jobs"`, and the `jobs` grant.

    jobs.enqueue("send-report", {"week": 48})
    jobs.start_workflow(jobs.chord([jobs.Step.task("render", input=p) for p in pages],
                                   jobs.Step.task("merge")))

Every job started here is a child of the current job and counts against
the grant's limit of children. See `docs/workflows.md` for the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from ._convert import dumps
from ._host import call, to_ms


def enqueue(
    task: str,
    input: Any = None,
    *,
    queue: str | None = None,
    countdown: float | timedelta | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Enqueues a job of `task` with `input` (any value a task may return:
    JSON data, dataclasses, enums) as a child of the current job; returns
    its id. `countdown`: seconds before it may run; `idempotency_key`: a
    second enqueue with the key returns the first id."""
    data = dumps(input, "input")
    countdown_ms = to_ms("countdown", countdown)
    with call("jobs", "enqueue"):
        from wit_world.imports import jobs as wit

        options = wit.EnqueueOptions(
            queue=queue, countdown_ms=countdown_ms, idempotency_key=idempotency_key
        )
        return wit.enqueue(task, data, options)


class Step:
    """A step of a workflow: a job, or a chain, group or chord of steps."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value

    @staticmethod
    def task(
        task: str,
        *,
        input: Any = None,
        queue: str | None = None,
        countdown: float | None = None,
        previous: str | None = None,
        collect: bool = False,
    ) -> Step:
        """A job of `task`. Its input is the output of the step before (in a
        chain) unless `input` is given; with `previous="key"` that output is
        added to `input` (an object) under `key`; with `collect=True` it gets
        the outputs of every earlier step of the chain, as a list."""
        v: dict[str, Any] = {"task": task}
        if input is not None:
            v["input"] = input
        if queue is not None:
            v["queue"] = queue
        if countdown is not None:
            v["countdown"] = countdown
        if previous is not None:
            v["previous"] = previous
        if collect:
            v["collect"] = True
        return Step(v)

    @staticmethod
    def chain(*steps: Step | Iterable[Step]) -> Step:
        """Steps one after another: each gets the output of the one before."""
        return Step({"chain": [s.value for s in _flat(steps)]})

    @staticmethod
    def group(*steps: Step | Iterable[Step]) -> Step:
        """Steps at the same time: the output is the list of theirs."""
        return Step({"group": [s.value for s in _flat(steps)]})

    @staticmethod
    def chord(members: Iterable[Step], callback: Step) -> Step:
        """A group, then `callback` with the list of their outputs, once, and
        only if every member succeeded."""
        return Step({"chord": [s.value for s in members], "callback": callback.value})

    def on_error(self, step: Step) -> Step:
        """A job that runs once if a job under this step fails for good; it
        gets `{workflow, step, job, state, error}`."""
        return Step({**self.value, "on_error": step.value})

    def to_json(self) -> str:
        """The step as the `workflow` field of `POST /v1/workflows`."""
        return dumps(self.value, "a step's input")


def _flat(steps: tuple[Step | Iterable[Step], ...]) -> list[Step]:
    out: list[Step] = []
    for s in steps:
        if isinstance(s, Step):
            out.append(s)
        else:
            out.extend(s)
    return out


def chain(*steps: Step | Iterable[Step]) -> Step:
    return Step.chain(*steps)


def group(*steps: Step | Iterable[Step]) -> Step:
    return Step.group(*steps)


def chord(members: Iterable[Step], callback: Step) -> Step:
    return Step.chord(members, callback)


def start_workflow(
    workflow: Step,
    *,
    idempotency_key: str | None = None,
    ttl: float | timedelta | None = None,
) -> str:
    """Starts `workflow` with its jobs as children of the current job;
    returns the workflow's id (`GET /v1/workflows/{id}`). By default the
    idempotency key is derived from the current run; `ttl` is how long (in
    seconds) the workflow's record is kept after it ends."""
    data = workflow.to_json()
    ttl_ms = to_ms("ttl", ttl)
    with call("jobs", "start_workflow"):
        from wit_world.imports import jobs as wit

        options = wit.WorkflowOptions(
            idempotency_key=idempotency_key,
            ttl_secs=None if ttl_ms is None else max(1, ttl_ms // 1000),
        )
        return wit.start_workflow(data, options)
