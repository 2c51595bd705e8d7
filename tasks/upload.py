"""The upload stage as a Celery task: load state, run pipeline.stages.upload, record."""

from __future__ import annotations

from celery import Task

from pipeline.celery import app, settings
from pipeline.celery_config import TASK_NAMES
from pipeline.stages import upload
from pipeline.stages.glue import execute


@app.task(name=TASK_NAMES["upload"], bind=True, max_retries=None)
def run(self: Task, task_id: str, owner: str | None = None) -> str:
    return execute(self, settings, "upload", task_id, upload.run, owner=owner)
