"""Cancelling jobs, in any state, by task id (the control topic's ``cancel`` command and the
CLI's ``cancel`` verb).

- not dispatched yet (received, waiting): ``cancelled`` at once; the dispatcher sends the
  callback (:func:`pipeline.scheduler.upkeep.owed_callbacks`);
- queued in Redis, or between two stages: ``cancelled`` now; the next stage's lease
  acquire refuses a final job, so it never starts; the callback as above;
- running: ``cancelled`` now; the running stage's heartbeat sees it and the stage stops at
  its next check (its lease and its worker freed), and that worker sends the callback;
- final already: left unchanged, answered ``already final``; unknown: ``unknown``.

Cancellation is a row in PostgreSQL: it survives the restart of any process.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, text

_CANCEL = text("""
UPDATE tasks SET status = 'cancelled', error_code = 'task.cancelled',
    error_message = :reason, finished_at = now(), updated_at = now()
WHERE task_id = ANY(:ids)
  AND status NOT IN ('completed', 'failed', 'rejected', 'cancelled', 'expired')
RETURNING task_id, lease_owner IS NOT NULL AS running""")

_EVENT = text("""
INSERT INTO task_events (task_id, stage, event, detail)
SELECT t, NULL, 'cancelled', jsonb_build_object('reason', CAST(:reason AS text))
FROM unnest(CAST(:ids AS text[])) AS t""")

_KNOWN = text("SELECT task_id, status FROM tasks WHERE task_id = ANY(:ids)")


def cancel(db_engine: Engine, task_ids: Sequence[str],
           reason: str = "cancelled by request") -> dict[str, str]:
    """Cancel ``task_ids``; for each id one of ``cancelled``, ``cancelled_running`` (its
    running stage stops at its next check), ``already final: <status>`` or ``unknown``.
    Raises the driver's errors."""
    ids = list(dict.fromkeys(task_ids))
    with db_engine.begin() as conn:
        done = {r.task_id: r.running for r in conn.execute(_CANCEL, {"ids": ids,
                                                                      "reason": reason})}
        if done:
            conn.execute(_EVENT, {"ids": list(done), "reason": reason})
        known = {r.task_id: r.status for r in conn.execute(_KNOWN, {"ids": ids})}
    out: dict[str, str] = {}
    for task_id in ids:
        if task_id in done:
            out[task_id] = "cancelled_running" if done[task_id] else "cancelled"
        elif task_id in known:
            out[task_id] = f"already final: {known[task_id]}"
        else:
            out[task_id] = "unknown"
    return out
