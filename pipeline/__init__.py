"""sonic-pipeline: portrait image + speech audio -> talking-head video, at fleet scale.

``celery -A pipeline worker`` finds the Celery app here (``pipeline.celery:app``); the
import is lazy so that importing ``pipeline.settings`` alone stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["celery", "app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from pipeline.celery import app

        return app
    raise AttributeError(name)
