"""The baseline of the orchestration benchmark: a plain five-step Celery chain of no-op
tasks on the same Redis, Celery's defaults (results ignored), a prefork worker of two
children. The last step pushes ``"<id> <wall time>"`` onto a Redis list, so the sender
sees when each chain ended.

    celery -A tests.bench.noop_chain worker -Q bench-noop -P prefork -c 2   (the worker)
    send(app, "id-1"); ends = collect(redis, n)                            (the client)
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery, chain

#: Redis database of the baseline's broker (flushed by the benchmark).
NOOP_REDIS_DB = 12
QUEUE = "bench-noop"
DONE_KEY = "bench:noop:done"
STEPS = 5


def broker_url() -> str:
    host = os.environ.get("SONIC_REDIS_HOST", "127.0.0.1")
    port = os.environ.get("SONIC_REDIS_PORT", "16379")
    return f"redis://{host}:{port}/{NOOP_REDIS_DB}"


app = Celery("bench_noop", broker=broker_url())
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE,
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
_done = None


@app.task(name="bench.noop")
def noop(job_id: str) -> None:
    """Step 1 to 4: nothing."""


@app.task(name="bench.noop_last")
def noop_last(job_id: str) -> None:
    """Step 5: note the end."""
    global _done
    if _done is None:
        _done = redis.Redis.from_url(broker_url())
    _done.rpush(DONE_KEY, f"{job_id} {time.time()}")


def send(job_id: str) -> None:
    """One chain: four no-op steps and the last."""
    steps = [noop.si(job_id) for _ in range(STEPS - 1)] + [noop_last.si(job_id)]
    chain(*steps).apply_async()
