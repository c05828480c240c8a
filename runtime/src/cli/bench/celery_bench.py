"""Celery's side of `runner bench queue`: the same no-op jobs, drained by one
Celery worker (prefork, concurrency 2 by default) on a Redis of its own.

Usage: python3 celery_bench.py REDIS_URL JOBS CONCURRENCY WORKDIR

Starts the worker and waits until it answers a ping, then enqueues JOBS
calls of a task that returns what the runner's `hello` returns, while the
worker drains them, and prints one JSON line: {"jobs_per_sec", "seconds",
"enqueue_seconds"}. Completion is counted from the result keys in Redis.
"""

import json
import os
import subprocess
import sys
import time

TASKS = '''
import os
from celery import Celery

app = Celery("runner_bench_tasks", broker=os.environ["BENCH_REDIS"], backend=os.environ["BENCH_REDIS"])


@app.task(name="runner_bench_tasks.hello")
def hello(name):
    return {"greeting": "Hello, %s!" % name, "attempt": 1}
'''


def main():
    url, jobs, concurrency, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(os.path.join(workdir, "runner_bench_tasks.py"), "w") as f:
        f.write(TASKS)
    os.environ["BENCH_REDIS"] = url
    sys.path.insert(0, workdir)
    import redis
    from runner_bench_tasks import app, hello

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "runner_bench_tasks", "worker",
         "-P", "prefork", "-c", str(concurrency), "--loglevel", "WARNING"],
        cwd=workdir, env=dict(os.environ, PYTHONPATH=workdir),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while not app.control.ping(timeout=0.5):
            if time.time() > deadline or worker.poll() is not None:
                raise SystemExit("the Celery worker did not start")
        r = redis.Redis.from_url(url)
        count = r.register_script("return #redis.call('keys', 'celery-task-meta-*')")
        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for _ in range(jobs):
                hello.apply_async(args=("bench",), producer=producer)
        enqueued = time.perf_counter() - t0
        deadline = time.time() + 600
        while count() < jobs:
            if time.time() > deadline:
                raise SystemExit("Celery did not drain the jobs in 600 s")
            time.sleep(0.05)
        took = time.perf_counter() - t0
        print(json.dumps({"jobs_per_sec": jobs / took, "seconds": took, "enqueue_seconds": enqueued}))
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


if __name__ == "__main__":
    main()
