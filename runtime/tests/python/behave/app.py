"""A Python task for the tests: what it does is the input's `do`."""

from __future__ import annotations

from dataclasses import dataclass

from runner_task import Fail, Retry, context, http, kv, mail, task


@dataclass
class Line:
    item: str
    quantity: int
    price: float


@dataclass
class Input:
    do: str
    lines: list[Line] | None = None
    key: str | None = None
    to: str | None = None


@dataclass
class Total:
    items: int
    total: float
    attempt: int


@task(needs=["kv", "mail"])
def behave(input: Input) -> Total | dict[str, object]:
    job = context.job()
    if input.do == "total":
        lines = input.lines or []
        return Total(
            items=sum(x.quantity for x in lines),
            total=sum(x.quantity * x.price for x in lines),
            attempt=job.attempt,
        )
    if input.do == "retry_once":
        if job.attempt == 1:
            raise Retry("not yet")
        return {"attempt": job.attempt}
    if input.do == "fail":
        raise Fail("the order is closed")
    if input.do == "raise":
        return {"ratio": 1 / len(input.lines or [])}
    if input.do == "guard":
        return {"first": kv.set_nx(f"guard:{input.key}", job.id, ttl=3600)}
    if input.do == "mail":
        mid = mail.send(to=f"山田 太郎 <{input.to}>", subject="本日の進捗リマインダー", text="進捗を報告してください。")
        return {"message_id": mid}
    if input.do == "burn":
        n = 0
        while True:
            n += 1
    if input.do == "hog":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if input.do == "undeclared":
        http.get("http://127.0.0.1:9/")
    raise Fail(f"unknown do: {input.do}")
