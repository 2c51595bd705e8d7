"""The reconciler: every job in a non-final state reaches a final state.

One sweep, in one transaction under an advisory lock (one bridge sweeps at a time):

(Jobs admitted and not dispatched, ``received`` or ``waiting``, are the backlog: the
dispatcher's, never the reconciler's.)

1. jobs ``running`` whose stage lease expired (the worker died), and finished jobs whose
   callback stage's lease expired: the lease is cleared in
   an ``UPDATE ... WHERE lease_expires_at < now() RETURNING`` (an atomic claim: a live
   lease is never touched, so no second live copy starts) and the stage is published
   again; a job that used its ``max_attempts`` fails with ``task.lost`` and its callback
   is published. ``attempts`` already counts each claimed try (the lease acquire bumps
   it), so a lost try is not counted twice.

2. jobs with no lease that made no progress for ``stalled_after_s`` (their Celery message
   vanished: Redis lost its data, a worker died holding a prefetched message): ``queued``
   or ``running`` between stages are published again from their current stage, finished
   jobs whose callback is not settled get their callback stage again. After Redis comes
   back with a new ``run_id`` (:class:`Broker` says so), this step runs at once for every
   such job, whatever its age. A copy of a message that was not lost after all is
   harmless: the stage lease lets one copy run, the others skip. ``updated_at`` is bumped
   with each re-dispatch, so a job waiting its turn gets at most one extra copy per
   ``stalled_after_s``.
3. a callback is never re-dispatched once its job finished more than ``callback_max_age_s``
   ago (``SONIC_WEBHOOK_MAX_AGE_S``): ``callback_status`` becomes ``failed`` instead.

The bridge runs sweeps from its consumer loop, which must keep polling to stay in its
group: a sweep waits at most ``LOCK_TIMEOUT`` for a lock (a migration, a long admin
transaction) and then gives up until the next interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Connection, Engine, text

from pipeline import metrics
from pipeline.state import bulk
from pipeline.state.bulk import EventRow

log = logging.getLogger(__name__)

#: ``dispatch(task_id, priority, first_stage)`` publishes a chain from that stage.
DispatchFn = Callable[[str, int, str], None]


class Broker(Protocol):
    """The Celery broker's epoch: whether it restarted (and may have lost messages)."""

    def restarted(self) -> str | None:
        """A token for the broker's new epoch when it restarted since the last
        :meth:`confirm`, else None."""
        ...

    def confirm(self, token: str) -> None:
        """Every job of the old epoch has been dispatched again: remember ``token``."""
        ...


_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtext(:key))")
LOCK_TIMEOUT = "2s"
_LIMITS = text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")

#: A stage is lost when its lease expired: a running job's stage, or the callback of a
#: finished one (which never fails the job: it is only re-queued).
_EXPIRED = text("""
WITH expired AS (
    SELECT task_id, lease_owner, coalesce(lease_stage, stage, 'preprocess') AS lease_stage,
           status = 'running' AND attempts >= :max AS lost,
           status <> 'running' AND finished_at < now() - make_interval(secs => :max_age)
               AS gave_up
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
    finished_at = CASE WHEN e.lost THEN now() ELSE t.finished_at END,
    callback_status = CASE WHEN e.gave_up THEN 'failed' ELSE t.callback_status END
FROM expired e
WHERE t.task_id = e.task_id AND t.lease_expires_at < now()
RETURNING t.task_id, t.priority, t.attempts, e.lost, e.gave_up, e.lease_stage,
          e.lease_owner""")

_FINAL = "'completed', 'failed', 'cancelled', 'expired'"

#: No lease, no progress: the job's Celery message is gone. Finished jobs whose callback is
#: older than the callback's max age are settled as failed instead of sent again.
_STALLED = text(f"""
WITH stalled AS (
    SELECT task_id FROM tasks
    WHERE kafka_topic = :topic AND lease_owner IS NULL
      AND updated_at < now() - make_interval(secs => :after)
      AND (status IN ('queued', 'running')
           OR (status IN ({_FINAL})
               AND (callback_status IS NULL OR callback_status IN ('retrying', 'queued'))))
    ORDER BY updated_at LIMIT :limit FOR UPDATE SKIP LOCKED)
UPDATE tasks t SET updated_at = now(),
    callback_status = CASE
        WHEN t.status IN ({_FINAL}) AND t.finished_at < now() - make_interval(secs => :max_age)
        THEN 'failed' ELSE t.callback_status END
FROM stalled s
WHERE t.task_id = s.task_id
RETURNING t.task_id, t.priority, t.attempts,
          CASE WHEN t.status IN ({_FINAL}) THEN 'callback'
               ELSE coalesce(t.stage, 'preprocess') END AS stage,
          t.status IN ({_FINAL}) AND t.callback_status = 'failed' AS gave_up""")


@dataclass
class Sweep:
    locked: bool = True  #: False: another bridge holds the sweep lock
    requeued: list[tuple[str, str]] = field(default_factory=list)  #: (task id, stage)
    lost: list[str] = field(default_factory=list)  #: failed with task.lost
    stalled: list[tuple[str, str]] = field(default_factory=list)  #: (task id, stage) re-sent
    callbacks_expired: list[str] = field(default_factory=list)  #: callback given up by age
    broker_restarted: bool = False  #: the broker's new epoch was handled in this sweep


def sweep(db_engine: Engine, *, topic: str, max_attempts: int, dispatch: DispatchFn,
          limit: int = 500, stalled_after_s: float | None = None,
          callback_max_age_s: float = 24 * 3600, broker: Broker | None = None) -> Sweep:
    """One reconciler pass over ``topic``'s tasks (see the module docstring).

    ``stalled_after_s``: seconds without lease or progress before a job's stage is sent
    again (None: step 2 runs only after a broker restart). ``callback_max_age_s``: seconds
    after a job finished when its callback is given up. Raises the driver's or the
    broker's errors (the caller logs them and tries at the next interval).
    """
    epoch = broker.restarted() if broker is not None else None
    with db_engine.begin() as conn:
        conn.execute(_LIMITS)
        if not conn.execute(_LOCK, {"key": f"sonic-reconcile:{topic}"}).scalar():
            return Sweep(locked=False)
        out = Sweep(broker_restarted=epoch is not None)
        _expired_leases(conn, out, topic, max_attempts, callback_max_age_s, limit, dispatch)
        more = False
        if epoch is not None or stalled_after_s is not None:
            after = 0.0 if epoch is not None else float(stalled_after_s or 0.0)
            more = _stalled(conn, out, topic, after, callback_max_age_s, limit,
                            dispatch) >= limit
    if epoch is not None and broker is not None and not more:
        broker.confirm(epoch)  # else the next sweep goes on with the rest
    for reason, runs in (("expired", out.requeued), ("stalled", out.stalled)):
        for stage in {s for _, s in runs}:
            metrics.count_takeover(stage, reason, sum(1 for _, s in runs if s == stage))
    if out.requeued or out.lost or out.stalled or out.callbacks_expired:
        log.warning("reconciler: %d stages re-queued, %d lost, %d stalled re-sent%s, "
                    "%d callbacks given up", len(out.requeued), len(out.lost),
                    len(out.stalled), " (the broker restarted)" if epoch is not None else "",
                    len(out.callbacks_expired))
    return out


def _expired_leases(conn: Connection, out: Sweep, topic: str, max_attempts: int,
                    max_age: float, limit: int, dispatch: DispatchFn) -> None:
    rows = conn.execute(_EXPIRED, {"topic": topic, "max": max_attempts, "max_age": max_age,
                                   "limit": limit}).all()
    events: list[EventRow] = []
    for row in rows:
        detail = {"reason": "lease_expired", "owner": row.lease_owner}
        if row.gave_up:
            out.callbacks_expired.append(row.task_id)
            events.append(EventRow(row.task_id, "callback", "failed", row.attempts,
                                   dict(detail, code="callback.expired")))
        elif row.lost:
            dispatch(row.task_id, row.priority, "callback")
            out.lost.append(row.task_id)
            events.append(EventRow(row.task_id, row.lease_stage, "failed", row.attempts,
                                   dict(detail, code="task.lost")))
        else:
            dispatch(row.task_id, row.priority, row.lease_stage)
            out.requeued.append((row.task_id, row.lease_stage))
            events.append(EventRow(row.task_id, row.lease_stage, "requeued", row.attempts,
                                   detail))
    _events(conn, events)


def _stalled(conn: Connection, out: Sweep, topic: str, after: float, max_age: float,
             limit: int, dispatch: DispatchFn) -> int:
    rows = conn.execute(_STALLED, {"topic": topic, "after": after, "max_age": max_age,
                                   "limit": limit}).all()
    events: list[EventRow] = []
    reason = "broker_restarted" if out.broker_restarted else "stalled"
    for row in rows:
        if row.gave_up:
            out.callbacks_expired.append(row.task_id)
            events.append(EventRow(row.task_id, "callback", "failed", row.attempts,
                                   {"reason": reason, "code": "callback.expired"}))
            continue
        dispatch(row.task_id, row.priority, row.stage)
        out.stalled.append((row.task_id, row.stage))
        events.append(EventRow(row.task_id, row.stage, "requeued", row.attempts,
                               {"reason": reason}))
    _events(conn, events)
    return len(rows)


def _events(conn: Connection, events: list[EventRow]) -> None:
    """The events, inside the sweep's transaction (the same DBAPI connection)."""
    if events:
        with conn.connection.cursor() as cur:
            bulk.insert_events(cur, events)
