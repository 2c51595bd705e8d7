"""Map a stage's :class:`~pipeline.stages.runner.Result` onto Celery; never lose the chain.

- CONTINUE: the glue publishes the chain's next step itself (the rest of the chain rides
  along, as Celery would), retrying the publish in place; the task then returns.
- SKIP and FAILED raise ``Ignore`` (this copy of the chain stops: a duplicate must not
  continue it; a failure sends its callback instead).
- RETRY re-publishes the same task, with the rest of the chain, after a backoff
  (``Task.retry`` keeps ``request.chain``); after a database error it carries the lease
  token (``owner``) so the retry takes its own lease back.

A publish that still fails after its in-place retries (Redis down, out of memory) is
handed to the reconciler through the database (:func:`pipeline.state.leases.hand_off`):
the message is never acknowledged and lost with nothing left to say it is owed.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Task, signature
from celery.exceptions import Ignore, Reject, Retry
from sqlalchemy import Engine

from pipeline.celery_config import TASK_NAMES
from pipeline.settings import Settings
from pipeline.stages.runner import StageFn, StageOutcome, next_stage, run_stage, worker_id
from pipeline.state import leases
from pipeline.state.db import make_db_engine

log = logging.getLogger(__name__)

#: In-place publish retries of the next step or a callback: about 25 s of waiting, then
#: the step is handed to the reconciler.
PUBLISH_RETRY: dict[str, Any] = {"max_retries": 8, "interval_start": 0.5,
                                 "interval_step": 1.0, "interval_max": 4.0}

_db_engines: dict[int, Engine] = {}


def process_db_engine(settings: Settings) -> Engine:
    """One SQLAlchemy engine per process (a forked child never reuses its parent's)."""
    pid = os.getpid()
    if pid not in _db_engines:
        _db_engines.clear()
        _db_engines[pid] = make_db_engine(settings)
    return _db_engines[pid]


def send_callback(task: Task, task_id: str) -> None:
    """Publish the callback stage of ``task_id`` (raises the broker's error).

    ``ignore_result``: nobody waits for it (else Celery subscribes to its result in Redis,
    and during a Redis outage that subscription gives up on the whole process)."""
    task.app.send_task(TASK_NAMES["callback"], args=[task_id], queue="callback",
                       task_id=f"{task_id}:callback", ignore_result=True, retry=True,
                       retry_policy=PUBLISH_RETRY)


def publish_next(task: Task) -> bool:
    """Publish the next step of this task's chain with the rest of the chain; False when
    this task is the chain's last. Celery then has nothing left to publish."""
    chain = task.request.chain
    if not chain:
        return False
    step = signature(chain[-1], app=task.app)
    step.apply_async(chain=chain[:-1], parent_id=task.request.id,
                     root_id=task.request.root_id or task.request.id,
                     retry=True, retry_policy=PUBLISH_RETRY)
    task.request.chain = None
    return True


def _owed(db_engine: Engine, task_id: str, stage: str, owner: str, exc: BaseException) -> None:
    """The message for ``stage`` could not be published: leave it to the reconciler."""
    log.error("cannot publish %s of %s (%r): handed to the reconciler", stage, task_id, exc)
    if not leases.hand_off(db_engine, task_id, stage, owner):
        log.warning("%s of %s not handed off: another live lease holds it", stage, task_id)


def execute(task: Task, settings: Settings, stage: str, task_id: str, fn: StageFn,
            max_attempts: int | None = None, owner: str | None = None) -> str:
    """Run the stage for a Celery task and act on its outcome (see the module docstring).

    ``owner``: the lease token a retried message carries (None for a first delivery).
    Raises ``Retry`` or ``Ignore`` as Celery expects; returns ``task_id`` otherwise.
    """
    db_engine = process_db_engine(settings)
    result = run_stage(settings, db_engine, task_id, stage, fn, owner=owner,
                       max_attempts=max_attempts, retries=task.request.retries or 0)
    if result.outcome is StageOutcome.CONTINUE:
        following = next_stage(stage)
        try:
            publish_next(task)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the step is owed
            if following is not None:
                _owed(db_engine, task_id, following, owner or worker_id(), exc)
            task.request.chain = None
        return task_id
    if result.outcome is StageOutcome.RETRY:
        kwargs = {"owner": result.owner} if result.owner else {}
        try:
            raise task.retry(args=[task_id], kwargs=kwargs, countdown=result.delay_s,
                             exc=result.error, retry_policy=PUBLISH_RETRY)
        except Retry:
            raise
        except Reject as exc:  # the retry could not be published
            _owed(db_engine, task_id, stage, result.owner or owner or worker_id(), exc)
            raise Ignore() from None
    if result.outcome is StageOutcome.FAILED and stage != "callback":
        try:
            send_callback(task, task_id)
        except Exception as exc:  # noqa: BLE001
            _owed(db_engine, task_id, "callback", owner or worker_id(), exc)
    raise Ignore()
