"""The component's export: the `run` of the world `runner-task build`
generates, calling the `@task` function."""

from __future__ import annotations

import wit_world
from componentize_py_types import Err

from . import _task


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        kind, text = _task.run(input)
        if kind == _task.Outcome.RETRY:
            raise Err(wit_world.TaskError_Retry(text))
        if kind == _task.Outcome.FAIL:
            raise Err(wit_world.TaskError_Fail(text))
        return text
