"""Cancelling jobs, in any state, by task id (the control topic's ``cancel`` command and the
CLI's ``cancel`` verb).

- not dispatched yet (received, waiting): ``cancelled`` at once; the dispatcher sends the
  callback (:func:`pipeline.scheduler.upkeep.owed_callbacks`);
- queued in Redis, or between two stages: ``cancelled`` now; the next stage's lease
  acquire refuses a final job, so it never starts; the callback as above;
- running: ``cancelled`` now; the running stage's heartbeat sees it and the stage stops at
  its next check (its lease and its worker freed), and that worker sends the callback;
- final already: left unchanged, answered ``already final``; unknown: ``unknown``.

:func:`cancel_ahead` (the control topic and ``sonic-pipeline cancel``) goes one step
further for an id not admitted yet: it writes a ``cancelled`` row for it at once (its
tombstone: kafka columns empty, ``callback_status`` ``none``), answered
``cancelled_before_admission``. When its job message comes, admission finds the id taken
and the job never runs; the message's fields fill the tombstone and its ``cancelled``
callback is owed to the URL it names (:mod:`pipeline.state.admission`). The tombstone is
written with ``ON CONFLICT DO NOTHING`` after the cancel; an admission that commits in
between is caught by cancelling again, so the cancel wins whichever arrives first.

Cancellation is a row in PostgreSQL: it survives the restart of any process. A cancel
that ends jobs wakes their topics' dispatchers at its commit (a window slot, a key freed).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, text

from pipeline.state import wake

_CANCEL = text("""
UPDATE tasks SET status = 'cancelled', error_code = 'task.cancelled',
    error_message = :reason, finished_at = now(), updated_at = now()
WHERE task_id = ANY(:ids)
  AND status NOT IN ('completed', 'failed', 'rejected', 'cancelled', 'expired')
RETURNING task_id, lease_owner IS NOT NULL AS running, kafka_topic""")

_EVENT = text("""
INSERT INTO task_events (task_id, stage, event, detail)
SELECT t, NULL, 'cancelled', jsonb_build_object('reason', CAST(:reason AS text))
FROM unnest(CAST(:ids AS text[])) AS t""")

_KNOWN = text("SELECT task_id, status FROM tasks WHERE task_id = ANY(:ids)")

_TOMBSTONE = text("""
WITH new AS (
    INSERT INTO tasks (task_id, kafka_topic, status, error_code, error_message, finished_at,
                       callback_status)
    SELECT t, :topic, 'cancelled', 'task.cancelled', :reason, now(), 'none'
    FROM unnest(CAST(:ids AS text[])) AS t
    ON CONFLICT (task_id) DO NOTHING RETURNING task_id
), events AS (
    INSERT INTO task_events (task_id, event, detail)
    SELECT task_id, 'cancelled', jsonb_build_object('reason', CAST(:reason AS text),
                                                    'before_admission', true)
    FROM new
)
SELECT task_id FROM new""")

#: The answer for an id cancelled before its message was admitted (its tombstone).
BEFORE_ADMISSION = "cancelled_before_admission"


#: The reason recorded when a cancel names none.
DEFAULT_REASON = "cancelled by request"
#: Longest reason kept (characters): longer ones are cut, whoever sent them (the control
#: topic, the CLI), before they reach the row, the events and the callback.
REASON_MAX = 500


def reason_kept(reason: str | None) -> str:
    """``reason`` as recorded: cut to :data:`REASON_MAX` characters, empty -> default."""
    return (reason or "")[:REASON_MAX] or DEFAULT_REASON


def cancel(db_engine: Engine, task_ids: Sequence[str],
           reason: str = DEFAULT_REASON) -> dict[str, str]:
    """Cancel ``task_ids``; for each id one of ``cancelled``, ``cancelled_running`` (its
    running stage stops at its next check), ``already final: <status>`` or ``unknown``.
    ``reason`` is kept as :func:`reason_kept` says. Raises the driver's errors."""
    ids = list(dict.fromkeys(task_ids))
    reason = reason_kept(reason)
    with db_engine.begin() as conn:
        rows = conn.execute(_CANCEL, {"ids": ids, "reason": reason}).all()
        done = {r.task_id: r.running for r in rows}
        topics = {r.kafka_topic for r in rows}
        if done:
            conn.execute(_EVENT, {"ids": list(done), "reason": reason})
            # a cancelled job frees its window slot and its key: the topics' dispatchers
            # look at once (at commit), not at their next poll
            conn.execute(wake.NOTIFY_TOPICS, {"topics": sorted(topics - {None})})
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


def cancel_ahead(db_engine: Engine, topic: str, task_ids: Sequence[str],
                 reason: str = DEFAULT_REASON) -> dict[str, str]:
    """:func:`cancel`, and a tombstone in ``topic`` for each id not admitted yet (module
    docstring), answered ``cancelled_before_admission``. The ids must be valid task ids
    (:func:`pipeline.job_ids.is_task_id`): the caller checks. Raises the driver's errors."""
    reason = reason_kept(reason)
    out = cancel(db_engine, task_ids, reason)
    unknown = [t for t, outcome in out.items() if outcome == "unknown"]
    if unknown:
        with db_engine.begin() as conn:
            made = {r.task_id for r in conn.execute(
                _TOMBSTONE, {"ids": unknown, "topic": topic, "reason": reason})}
        for task_id in made:
            out[task_id] = BEFORE_ADMISSION
        raced = [t for t in unknown if t not in made]
        if raced:  # admitted meanwhile: cancel the row that is there now
            out.update(cancel(db_engine, raced, reason))
    return out
