"""The preprocess stage as a Celery task: load state, run pipeline.stages.preprocess, record."""

from __future__ import annotations

from celery import Task

from pipeline.celery import app, settings
from pipeline.celery_config import TASK_NAMES
from pipeline.stages import preprocess
from pipeline.stages.glue import execute


@app.task(name=TASK_NAMES["preprocess"], bind=True, max_retries=None)
def run(self: Task, task_id: str, owner: str | None = None) -> str:
    return execute(self, settings, "preprocess", task_id, preprocess.run, owner=owner)
