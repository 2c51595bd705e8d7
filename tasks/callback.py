"""The callback stage as a Celery task. It retries by age (``SONIC_WEBHOOK_MAX_AGE_S``),
not by the attempts cap of the other stages."""

from __future__ import annotations

from celery import Task

from pipeline.celery import app, settings
from pipeline.celery_config import TASK_NAMES
from pipeline.stages import callback
from pipeline.stages.glue import execute

#: Effectively unbounded: the stage gives up by age itself.
ATTEMPTS = 1_000_000


@app.task(name=TASK_NAMES["callback"], bind=True, max_retries=None)
def run(self: Task, task_id: str, owner: str | None = None) -> str:
    return execute(self, settings, "callback", task_id, callback.run, max_attempts=ATTEMPTS,
                   owner=owner)
