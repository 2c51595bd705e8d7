"""The gpu stage as a Celery task. The engine loads once per worker process and stays
warm: in the prefork child (``worker_process_init``; the parent never touches CUDA), or
at start-up for the solo/threads pools. Only workers that consume the gpu queue load it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_ready

from pipeline import worker_hooks
from pipeline.celery import app, settings
from pipeline.celery_config import TASK_NAMES
from pipeline.errors import EngineError
from pipeline.stages import inference
from pipeline.stages.glue import execute

log = logging.getLogger(__name__)


def _warm() -> None:
    if not worker_hooks.consumes("gpu"):
        return
    from pipeline.engines import get_engine

    try:
        get_engine(settings.default_engine, settings)
        log.warning("engine %s loaded and warm in this process", settings.default_engine)
    except EngineError as exc:  # jobs will fail with the same code; the worker stays up
        log.warning("engine not loaded: %s", exc)


@worker_process_init.connect
def _warm_child(**_: Any) -> None:
    _warm()


@worker_ready.connect
def _warm_parent(sender: Any = None, **_: Any) -> None:
    if settings.gpu_pool != "prefork":
        _warm()


@app.task(name=TASK_NAMES["gpu"], bind=True, max_retries=None)
def run(self: Task, task_id: str, owner: str | None = None) -> str:
    return execute(self, settings, "gpu", task_id, inference.run, owner=owner)
