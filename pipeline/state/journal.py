"""Appending to ``task_events`` and recording final outcomes (a final outcome wakes the
dispatcher: :mod:`pipeline.state.wake`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, insert, text

from pipeline.state import wake
from pipeline.state.models import TaskEvent
from pipeline.state.status import RANK, Status, rank_case


def record(db_engine: Engine, task_id: str, stage: str | None, event: str, *,
           worker: str | None = None, attempt: int = 0, duration_s: float | None = None,
           detail: dict[str, Any] | None = None) -> None:
    """Append one event (its own short transaction: history survives a later rollback)."""
    with db_engine.begin() as conn:
        append(conn, task_id, stage, event, worker=worker, attempt=attempt,
               duration_s=duration_s, detail=detail)


def append(conn: Connection, task_id: str, stage: str | None, event: str, *,
           worker: str | None = None, attempt: int = 0, duration_s: float | None = None,
           detail: dict[str, Any] | None = None) -> None:
    """Append one event in the caller's transaction (it commits with the change it tells)."""
    conn.execute(insert(TaskEvent).values(
        task_id=task_id, stage=stage, event=event, worker=worker, attempt=attempt,
        duration_s=duration_s, detail=detail or {}))


def finish(db_engine: Engine, task_id: str, status: Status, *, owner: str | None = None,
           error_code: str | None = None, error_message: str | None = None) -> bool:
    """Move a task to a final status (forward only) and drop any lease ``owner`` held.

    Returns False when the task was already final (a late or duplicate outcome).
    """
    assert status.final
    with db_engine.begin() as conn:
        result = conn.execute(text(f"""
            UPDATE tasks SET status = :status, finished_at = now(), updated_at = now(),
                error_code = coalesce(:code, error_code),
                error_message = coalesce(:message, error_message),
                lease_owner = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_owner END,
                lease_stage = CASE WHEN lease_owner = :owner THEN NULL ELSE lease_stage END,
                lease_expires_at = CASE WHEN lease_owner = :owner THEN NULL
                                        ELSE lease_expires_at END
            WHERE task_id = :t AND {rank_case()} < {RANK[status]}
        """), {"t": task_id, "status": status.value, "code": error_code,
               "message": error_message, "owner": owner})
        if result.rowcount == 1:  # a place in the window frees, waiting jobs may go
            conn.execute(wake.NOTIFY_TOPIC, {"t": task_id})
    return result.rowcount == 1
