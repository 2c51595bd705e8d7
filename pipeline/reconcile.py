"""The reconciler: every job in a non-final state reaches a final state.

One sweep, in one transaction under an advisory lock (one bridge sweeps at a time):

1. jobs ``received`` longer than ``requeue_after_s`` (admitted, never queued): if the
   dispatch marker says their chain is already in Redis they are only marked
   ``queued``; otherwise their chain is published again and they are marked.
2. jobs ``running`` whose stage lease expired (the worker died), and finished jobs whose
   callback stage's lease expired: the lease is cleared in
   an ``UPDATE ... WHERE lease_expires_at < now() RETURNING`` (an atomic claim: a live
   lease is never touched, so no second live copy starts) and the stage is published
   again; a job that used its ``max_attempts`` fails with ``task.lost`` and its callback
   is published. ``attempts`` already counts each claimed try (the lease acquire bumps
   it), so a lost try is not counted twice.

The bridge runs sweeps from its consumer loop, which must keep polling to stay in its
group: a sweep waits at most ``LOCK_TIMEOUT`` for a lock (a migration, a long admin
transaction) and then gives up until the next interval.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

#: ``dispatch(task_id, priority, first_stage)`` publishes a chain from that stage.
DispatchFn = Callable[[str, int, str], None]


class Markers(Protocol):
    """The dispatch markers: task ids whose chain is in Redis but maybe not marked queued."""

    def pushed(self, task_ids: list[str]) -> set[str]: ...

    def some(self, limit: int) -> list[str]: ...

    def forget(self, task_ids: list[str]) -> None: ...


class NoMarkers:
    def pushed(self, task_ids: list[str]) -> set[str]:
        return set()

    def some(self, limit: int) -> list[str]:
        return []

    def forget(self, task_ids: list[str]) -> None:
        pass

_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtext(:key))")
LOCK_TIMEOUT = "2s"
_LIMITS = text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")

_STUCK = text("""
SELECT task_id, priority FROM tasks
WHERE status = 'received' AND kafka_topic = :topic
  AND received_at < now() - make_interval(secs => :after)
ORDER BY received_at LIMIT :limit FOR UPDATE SKIP LOCKED""")

_STILL_RECEIVED = text("SELECT task_id FROM tasks WHERE task_id = ANY(:ids) "
                       "AND status = 'received'")

_MARK_QUEUED = text("""
UPDATE tasks SET status = 'queued', stage = 'preprocess', queued_at = now(), updated_at = now()
WHERE task_id = ANY(:ids) AND status = 'received'""")

#: A stage is lost when its lease expired: a running job's stage, or the callback of a
#: finished one (which never fails the job: it is only re-queued).
_EXPIRED = text("""
WITH expired AS (
    SELECT task_id, lease_owner, coalesce(lease_stage, stage, 'preprocess') AS lease_stage,
           status = 'running' AND attempts >= :max AS lost
    FROM tasks
    WHERE kafka_topic = :topic AND lease_owner IS NOT NULL AND lease_expires_at < now()
      AND (status = 'running' OR lease_stage = 'callback')
    ORDER BY lease_expires_at LIMIT :limit FOR UPDATE SKIP LOCKED)
UPDATE tasks t SET
    lease_owner = NULL, lease_stage = NULL, lease_expires_at = NULL, updated_at = now(),
    status = CASE WHEN e.lost THEN 'failed' ELSE t.status END,
    error_code = CASE WHEN e.lost THEN 'task.lost' ELSE t.error_code END,
    error_message = CASE WHEN e.lost
        THEN 'the stage ' || e.lease_stage || ' was lost ' || t.attempts
             || ' times (its worker stopped heart-beating)'
        ELSE t.error_message END,
    finished_at = CASE WHEN e.lost THEN now() ELSE t.finished_at END
FROM expired e
WHERE t.task_id = e.task_id AND t.lease_expires_at < now()
RETURNING t.task_id, t.priority, t.attempts, e.lost, e.lease_stage, e.lease_owner""")

_EVENTS = text("""
INSERT INTO task_events (task_id, stage, event, attempt, detail)
SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:stages AS text[]), CAST(:events AS text[]),
                     CAST(:attempts AS int[]), CAST(:details AS jsonb[]))""")


@dataclass
class Sweep:
    locked: bool = True  #: False: another bridge holds the sweep lock
    queued: list[str] = field(default_factory=list)  #: received -> queued, chain published
    marked: list[str] = field(default_factory=list)  #: received -> queued, chain was there
    requeued: list[tuple[str, str]] = field(default_factory=list)  #: (task id, stage)
    lost: list[str] = field(default_factory=list)  #: failed with task.lost


def sweep(engine: Engine, *, topic: str, requeue_after_s: float, max_attempts: int,
          dispatch: DispatchFn, markers: Markers | None = None, limit: int = 500) -> Sweep:
    """One reconciler pass over ``topic``'s tasks (see the module docstring)."""
    markers = markers or NoMarkers()
    with engine.begin() as conn:
        conn.execute(_LIMITS)
        if not conn.execute(_LOCK, {"key": f"sonic-reconcile:{topic}"}).scalar():
            return Sweep(locked=False)
        out = Sweep()
        _never_queued(conn, out, topic, requeue_after_s, limit, dispatch, markers)
        _expired_leases(conn, out, topic, max_attempts, limit, dispatch)
        # Markers of tasks no longer received (a bridge died before removing them).
        some = markers.some(limit)
        still = {r[0] for r in conn.execute(_STILL_RECEIVED, {"ids": some})} if some else set()
    markers.forget(out.queued + out.marked + [t for t in some if t not in still])
    if out.queued or out.marked or out.requeued or out.lost:
        log.warning("reconciler: %d re-dispatched, %d marked queued, %d stages re-queued, "
                    "%d lost", len(out.queued), len(out.marked), len(out.requeued),
                    len(out.lost))
    return out


def _never_queued(conn: Connection, out: Sweep, topic: str, after: float, limit: int,
                  dispatch: DispatchFn, markers: Markers) -> None:
    rows = conn.execute(_STUCK, {"topic": topic, "after": after, "limit": limit}).all()
    if not rows:
        return
    there = markers.pushed([r.task_id for r in rows])
    for row in rows:
        if row.task_id in there:
            out.marked.append(row.task_id)
        else:
            dispatch(row.task_id, row.priority, "preprocess")
            out.queued.append(row.task_id)
    ids = out.queued + out.marked
    conn.execute(_MARK_QUEUED, {"ids": ids})
    _events(conn, [(t, "preprocess", "requeued", 0,
                    {"reason": "never_queued", "chain_was_pushed": t in there}) for t in ids])


def _expired_leases(conn: Connection, out: Sweep, topic: str, max_attempts: int,
                    limit: int, dispatch: DispatchFn) -> None:
    rows = conn.execute(_EXPIRED, {"topic": topic, "max": max_attempts, "limit": limit}).all()
    events = []
    for row in rows:
        detail = {"reason": "lease_expired", "owner": row.lease_owner}
        if row.lost:
            dispatch(row.task_id, row.priority, "callback")
            out.lost.append(row.task_id)
            events.append((row.task_id, row.lease_stage, "failed", row.attempts,
                           dict(detail, code="task.lost")))
        else:
            dispatch(row.task_id, row.priority, row.lease_stage)
            out.requeued.append((row.task_id, row.lease_stage))
            events.append((row.task_id, row.lease_stage, "requeued", row.attempts, detail))
    _events(conn, events)


def _events(conn: Connection, events: Iterable[tuple[str, str, str, int, dict[str, object]]]) -> None:
    rows = list(events)
    if rows:
        ids, stages, names, attempts, details = (list(col) for col in zip(*rows))
        conn.execute(_EVENTS, {"ids": ids, "stages": stages, "events": names,
                               "attempts": attempts,
                               "details": [json.dumps(d) for d in details]})
