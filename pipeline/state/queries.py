"""Read-side queries for operators (the CLI's ``show``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from pipeline.settings import Settings
from pipeline.state.db import make_db_engine
from pipeline.state.models import Task, TaskEvent


def _row(obj: object, columns: list[str]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in columns}


def task_with_events(settings: Settings, task_id: str) -> dict[str, Any] | None:
    db_engine = make_db_engine(settings, pool_size=1)
    try:
        with db_engine.connect() as conn:
            task = conn.execute(select(Task).where(Task.task_id == task_id)).first()
            if task is None:
                return None
            events = conn.execute(
                select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
            ).all()
        task_cols = [c.name for c in Task.__table__.columns]
        event_cols = [c.name for c in TaskEvent.__table__.columns]
        return {
            "task": _row(task, task_cols),
            "events": [_row(e, event_cols) for e in events],
        }
    finally:
        db_engine.dispose()
