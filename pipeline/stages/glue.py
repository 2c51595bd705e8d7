"""Map a stage's :class:`~pipeline.stages.runner.Result` onto Celery.

CONTINUE returns (the chain goes on); SKIP and FAILED raise ``Ignore`` (this copy of the
chain stops: a duplicate must not continue it, a failure sends its callback instead);
RETRY re-publishes the same task with the rest of the chain after a backoff.
"""

from __future__ import annotations

import os

from celery import Task
from celery.exceptions import Ignore
from sqlalchemy import Engine

from pipeline.celery_config import TASK_NAMES
from pipeline.settings import Settings
from pipeline.stages.runner import Outcome, StageFn, run_stage
from pipeline.state.db import make_engine

_engines: dict[int, Engine] = {}


def process_engine(settings: Settings) -> Engine:
    """One SQLAlchemy engine per process (a forked child never reuses its parent's)."""
    pid = os.getpid()
    if pid not in _engines:
        _engines.clear()
        _engines[pid] = make_engine(settings)
    return _engines[pid]


def send_callback(task: Task, task_id: str) -> None:
    task.app.send_task(TASK_NAMES["callback"], args=[task_id], queue="callback",
                       task_id=f"{task_id}:callback")


def execute(task: Task, settings: Settings, stage: str, task_id: str, fn: StageFn,
            max_attempts: int | None = None) -> str:
    result = run_stage(settings, process_engine(settings), task_id, stage, fn,
                       max_attempts=max_attempts)
    if result.outcome is Outcome.CONTINUE:
        return task_id
    if result.outcome is Outcome.RETRY:
        raise task.retry(countdown=result.delay_s, max_retries=None, exc=result.error)
    if result.outcome is Outcome.FAILED and stage != "callback":
        send_callback(task, task_id)
    raise Ignore()
