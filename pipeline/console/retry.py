"""``sonic-pipeline retry ID``: run a finished job again as a new task, linked to the old one.

Task ids are idempotent (the same id is admitted once), so a retry is a new task: the old
job's stored message (``tasks.payload``: the validated fields, unknown ones kept) with

    task_id              ``<old id>.retry<n>`` (n = 1, 2, ...; a random hex id when that
                         would pass 128 characters)
    retry_of             the old task id (a top-level field, kept in ``tasks.payload``)
    metadata.retry_of    the same, so the callback tells upstream which job it replaces

sent with the old job's Kafka key (its ordering key) to the old job's topic. A deadline
already past is dropped. Jobs that are not final are refused (``cancel`` them first), so
are completed ones unless ``force``; a job rejected at the door has no stored message
(its bytes are in the DLQ: ``dlq replay --task-id ID --new-id``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, text

from pipeline.errors import PipelineError
from pipeline.job_ids import TASK_ID_MAX, is_task_id
from pipeline.state.status import FINAL, Status

_RETRIES = text("SELECT count(*) FROM tasks WHERE payload->>'retry_of' = :t")
_EXISTS = text("SELECT 1 FROM tasks WHERE task_id = :t")


def not_retryable(message: str) -> PipelineError:
    return PipelineError(message, code="task.not_retryable")


def retry_message(conn: Connection, row: dict[str, Any] | None, task_id: str, *,
                  force: bool = False) -> tuple[str | None, dict[str, Any]]:
    """(Kafka key, message) of the retry of ``row``; raises ``task.not_found`` or
    ``task.not_retryable``."""
    if row is None:
        raise PipelineError(f"no task {task_id!r} in the tasks table", code="task.not_found")
    status = row["status"]
    if status not in {s.value for s in FINAL}:
        raise not_retryable(f"{task_id} is {status}, not final: cancel it first "
                            f"(`sonic-pipeline cancel {task_id}`)")
    if status == Status.COMPLETED.value and not force:
        raise not_retryable(f"{task_id} completed; pass --force to render it again")
    payload = dict(row["payload"] or {})
    if not payload.get("image_url") or not payload.get("audio_url"):
        raise not_retryable(f"{task_id} was {status} at the door ({row['error_code']}): no "
                            "stored message; replay it from the DLQ with `sonic-pipeline dlq "
                            f"replay --task-id {task_id} --new-id`")
    new_id = next_id(conn, task_id)
    payload.update(task_id=new_id, retry_of=task_id)
    payload["metadata"] = {**(payload.get("metadata") or {}), "retry_of": task_id}
    deadline = row.get("deadline")
    if deadline is not None and deadline <= datetime.now(timezone.utc):
        payload.pop("deadline", None)
    return row["kafka_key"], payload


def next_id(conn: Connection, task_id: str) -> str:
    """``<task_id>.retry<n>`` for the first n not taken; a random id past the length cap."""
    import uuid

    n = int(conn.execute(_RETRIES, {"t": task_id}).scalar_one()) + 1
    while True:
        candidate = f"{task_id}.retry{n}"
        if len(candidate) > TASK_ID_MAX or not is_task_id(candidate):
            return uuid.uuid4().hex
        if conn.execute(_EXISTS, {"t": candidate}).first() is None:
            return candidate
        n += 1
