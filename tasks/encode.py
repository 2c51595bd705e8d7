"""The encode stage as a Celery task: load state, run pipeline.stages.encode, record."""

from __future__ import annotations

from celery import Task

from pipeline.celery import app, settings
from pipeline.celery_config import TASK_NAMES
from pipeline.stages import encode
from pipeline.stages.glue import execute


@app.task(name=TASK_NAMES["encode"], bind=True, max_retries=None)
def run(self: Task, task_id: str, owner: str | None = None) -> str:
    return execute(self, settings, "encode", task_id, encode.run, owner=owner)
