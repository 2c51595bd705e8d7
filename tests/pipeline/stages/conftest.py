"""What the stage tests share: a queued task row, fast heartbeats, the row and its events."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.settings import Settings


def insert_task(db_engine: Engine, task_id: str, stage: str = "preprocess") -> str:
    """A ``queued`` task at ``stage`` with an empty payload; returns its id."""
    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO tasks (task_id, status, stage, payload) "
                          "VALUES (:t, 'queued', :stage, '{}')"), {"t": task_id, "stage": stage})
    return task_id


def task_row(db_engine: Engine, task_id: str) -> dict[str, Any]:
    """The task's row as a dict."""
    with db_engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                 {"t": task_id}).mappings().one())


def task_events(db_engine: Engine, task_id: str, *columns: str) -> list[Any]:
    """The task's events in order: the ``event`` names, or tuples of ``columns``."""
    names = columns or ("event",)
    with db_engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {', '.join(names)} FROM task_events "
                                 "WHERE task_id = :t ORDER BY id"), {"t": task_id}).all()
    return [tuple(r) if columns else r[0] for r in rows]


@pytest.fixture
def task_id(db_engine: Engine, unique: str, request: pytest.FixtureRequest) -> str:
    """A queued preprocess task named after the test module (``test_faults`` -> ``faults-``)."""
    prefix = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    return insert_task(db_engine, f"{prefix}-{unique}")


@pytest.fixture
def fast(stack: Settings, tmp_path) -> Settings:
    """One-second heartbeats, 30 s leases, two attempts, a scratch work dir."""
    return stack.model_copy(update={"heartbeat_interval_s": 1, "lease_ttl_s": 30,
                                    "work_dir": tmp_path, "max_attempts": 2})
