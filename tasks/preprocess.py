"""The preprocess stage as a Celery task: load state, run pipeline.stages.preprocess, record."""

from __future__ import annotations

from celery import Task

from pipeline.celery import app, settings
from pipeline.celery_config import TASK_NAMES
from pipeline.stages import preprocess
from pipeline.stages.glue import execute


@app.task(name=TASK_NAMES["preprocess"], bind=True)
def run(self: Task, task_id: str) -> str:
    return execute(self, settings, "preprocess", task_id, preprocess.run)
