"""A Celery app for tests: no-op tasks under the stages' real names, same routing.

``celery -A tests.bridge.noop_app worker -Q preprocess,gpu,encode,upload,callback``.
Each task appends ``[task_id, stage, celery id]`` (JSON) to the Redis list ``noop:log``;
the callback stage marks the task completed in Postgres. With ``NOOP_MODE=complete``
the preprocess stage only completes the task and ends the chain (a fast drain).
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery, Task
from sqlalchemy import Engine, text

from pipeline.celery_config import TASK_NAMES, celery_config
from pipeline.settings import load
from pipeline.state.db import make_db_engine

LOG_KEY = "noop:log"
settings = load()
app = Celery("noop")
app.config_from_object(dict(celery_config(settings), imports=(), worker_send_task_events=False,
                            task_send_sent_event=False))

_clients: dict[int, tuple[redis.Redis, Engine]] = {}


def _services() -> tuple[redis.Redis, Engine]:
    pid = os.getpid()
    if pid not in _clients:
        _clients.clear()
        _clients[pid] = (redis.Redis(host=settings.redis_host, port=settings.redis_port,
                                     db=settings.redis_db),
                         make_db_engine(settings, pool_size=1))
    return _clients[pid]


def _complete(db_engine: Engine, task_id: str) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit TO off"))
        conn.execute(text("UPDATE tasks SET status = 'completed', finished_at = now() "
                          "WHERE task_id = :t"), {"t": task_id})


def _stage_task(stage: str) -> Any:
    @app.task(name=TASK_NAMES[stage], bind=True)
    def run(self: Task, task_id: str) -> str:
        client, db_engine = _services()
        if stage == "preprocess" and os.environ.get("NOOP_MODE") == "complete":
            _complete(db_engine, task_id)
            self.request.chain = None
            return task_id
        client.rpush(LOG_KEY, json.dumps([task_id, stage, self.request.id]))
        if stage == "callback":
            _complete(db_engine, task_id)
        return task_id

    return run


tasks = {stage: _stage_task(stage) for stage in TASK_NAMES}
