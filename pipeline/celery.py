"""The Celery app: ``celery -A pipeline worker -Q gpu`` finds it here.

The settings are read once, when a worker (or the bridge) imports this module. Nothing
here imports torch or the task modules' heavy dependencies.
"""

from __future__ import annotations

from celery import Celery

from pipeline import celery_pin, worker_hooks
from pipeline.celery_config import celery_config
from pipeline.settings import load

celery_pin.check()  # the chain message the stages publish (see pipeline/celery_pin.py)
settings = load()

app = Celery("pipeline")
app.config_from_object(celery_config(settings))
worker_hooks.connect(settings)

__all__ = ["app", "settings"]
