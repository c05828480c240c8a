"""The hello task in Python: `{"name": "Ada"}` -> `{"greeting": "Hello, Ada!"}`.

    runner-task build examples/python/hello/app.py -o hello-py.wasm
"""

from dataclasses import dataclass

from runner_task import context, task


@dataclass
class Input:
    name: str = "world"


@dataclass
class Output:
    greeting: str
    attempt: int


@task
def hello(input: Input) -> Output:
    context.info(f"greeting {input.name}")
    return Output(greeting=f"Hello, {input.name}!", attempt=context.job().attempt)
