"""Stage leases in PostgreSQL: at most one live copy of a task's stage.

A stage starts by claiming the lease in one atomic UPDATE: it succeeds only when the task
is at that stage (or an earlier one), not final, and nobody else holds a live lease (the
callback stage also runs for final jobs; it never sets ``started_at``, which only a real
stage's first start sets, so a job that never ran keeps it NULL and its stage). The
holder heart-beats; a dead holder's lease expires and the reconciler re-queues the stage.
A Redis redelivery after the visibility timeout, or a reconciler retry, finds the lease
held and backs off instead of starting a second copy. Every outcome is fenced by the
lease: a copy that lost it meanwhile (its worker frozen or cut off past the lease) has its
success (:func:`advance`), failure (:func:`fail`) or retry (:func:`release`) discarded.

The lease owner is a token, not a process: a stage retried after a database error passes
its token on, so the retry takes its own lease back (without counting a new attempt).
A stage whose next message could not be published leaves a :func:`hand_off`: an already
expired lease on the next stage, which the reconciler re-dispatches at its next sweep.

A hop costs two statements, each its own transaction: the claim with its ``started`` event, and the move to the
next stage with its ``succeeded`` event (each event commits with the change it tells). A
move that frees a place in the dispatcher's window (the gpu stage done) or ends the job
wakes the dispatcher (:mod:`pipeline.state.wake`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from pipeline.settings import STAGES
from pipeline.state import wake
from pipeline.state.db import single_statements
from pipeline.state.status import RANK, Status, rank_case

#: SQL giving a stage's position in the chain (unknown -> -1).
_STAGE_POS = "CASE {col} " + " ".join(
    f"WHEN '{stage}' THEN {i}" for i, stage in enumerate(STAGES)
) + " ELSE -1 END"

_FINAL = ", ".join(f"'{s.value}'" for s in Status if s.final)


class Beat(enum.Enum):
    LIVE = "live"  #: the lease was extended
    LOST = "lost"  #: another worker holds it now, or nobody (taken over and released)
    CANCELLED = "cancelled"  #: the task was cancelled


class Claim(enum.Enum):
    DONE = "done"  #: the stage already ran (or the task is final): nothing to do
    HELD = "held"  #: another live worker holds the lease
    MISSING = "missing"  #: no such task


@dataclass(frozen=True)
class Lease:
    task_id: str
    stage: str
    owner: str
    attempt: int
    row: dict[str, Any]
    #: The claim took the stage from another copy whose lease had expired (not from the
    #: reconciler, which clears the lease it re-queues).
    took_over: bool = False


_ACQUIRE_SQL = f"""
UPDATE tasks SET
    lease_owner = :owner, lease_stage = :stage,
    lease_expires_at = now() + make_interval(secs => :ttl), heartbeat_at = now(),
    -- The callback of a job that never ran (cancelled, expired, refused before any stage
    -- started) leaves its run fields as they are: it was never started, has no stage.
    stage = CASE WHEN :stage = 'callback' AND started_at IS NULL THEN stage ELSE :stage END,
    attempts = attempts + CASE WHEN lease_owner = :owner THEN 0 ELSE 1 END,
    status = CASE WHEN status IN ({_FINAL}) THEN status ELSE 'running' END,
    started_at = CASE WHEN :stage = 'callback' THEN started_at
                      ELSE coalesce(started_at, now()) END,
    updated_at = now()
-- The row as it was, locked first: who held the lease before this claim (a copy that
-- takes over another's expired lease is counted as a takeover).
FROM (SELECT lease_owner AS held_by FROM tasks WHERE task_id = :task_id FOR UPDATE) held
WHERE task_id = :task_id
  AND ({_STAGE_POS.format(col='stage')} <= {_STAGE_POS.format(col=':stage')}
       OR stage IS NULL)
  AND (lease_owner IS NULL OR lease_expires_at < now() OR lease_owner = :owner)
  -- The callback tells a final outcome: a callback message for a job not final (published
  -- by a dispatcher or reconciler whose transaction then rolled back) is a stray.
  AND (CASE WHEN :stage = 'callback' THEN status IN ({_FINAL}) ELSE status NOT IN ({_FINAL}) END)
  -- A settled callback is done: a later copy (redelivered after its worker was killed
  -- before the ack, re-sent by the reconciler) is skipped, not run and recorded again.
  AND NOT (:stage = 'callback'
           AND coalesce(callback_status IN ('delivered', 'failed', 'none'), false))
  -- A job past its deadline never starts (the dispatcher expires it); one under way goes on.
  AND NOT (:stage = 'preprocess' AND started_at IS NULL AND coalesce(deadline < now(), false))
RETURNING tasks.*, held.held_by
"""

_ACQUIRE = text(_ACQUIRE_SQL)

#: The claim and its ``started`` event in one statement (one round trip, run on its own:
#: a single statement is atomic). The status trigger of the tasks row fires before the
#: event's (the event is inserted from the claimed row), so ``running`` precedes the
#: stage's ``started`` in the status events, as with two statements.
_ACQUIRE_STARTED = text(f"""
WITH claimed AS ({_ACQUIRE_SQL}),
started AS (
    INSERT INTO task_events (task_id, stage, event, worker, attempt)
    SELECT task_id, :stage, 'started', :owner, attempts FROM claimed
)
SELECT * FROM claimed
""")


def acquire(db_engine: Engine, task_id: str, stage: str, owner: str, ttl_s: int, *,
            started: bool = False) -> Claim | Lease:
    """Claim ``stage`` of ``task_id`` for ``owner``; a :class:`Lease` or why not.

    ``started``: record the stage's ``started`` event in the claim's transaction."""
    params = {"owner": owner, "stage": stage, "ttl": ttl_s, "task_id": task_id}
    with single_statements(db_engine) as conn:
        row = conn.execute(_ACQUIRE_STARTED if started else _ACQUIRE,
                           params).mappings().first()
        if row is not None:
            task = dict(row)
            held_by = task.pop("held_by")
            return Lease(task_id, stage, owner, int(task["attempts"]), task,
                         took_over=held_by is not None and held_by != owner)
        current = conn.execute(
            text("SELECT stage, status, lease_owner, lease_expires_at > now() AS live "
                 "FROM tasks WHERE task_id = :t"), {"t": task_id}).mappings().first()
    if current is None:
        return Claim.MISSING
    if current["lease_owner"] is not None and current["live"]:
        return Claim.HELD
    return Claim.DONE


def heartbeat(db_engine: Engine, lease: Lease, ttl_s: int, progress: float | None = None) -> Beat:
    """Extend the lease (and write ``progress``); whether it is still ours."""
    with db_engine.begin() as conn:
        result = conn.execute(text("""
            UPDATE tasks SET heartbeat_at = now(),
                lease_expires_at = now() + make_interval(secs => :ttl),
                progress = coalesce(:progress, progress), updated_at = now()
            WHERE task_id = :t AND lease_owner = :owner AND status <> 'cancelled'
        """), {"t": lease.task_id, "owner": lease.owner, "ttl": ttl_s,
               "progress": progress})
        if result.rowcount == 1:
            return Beat.LIVE
        status = conn.execute(text("SELECT status FROM tasks WHERE task_id = :t"),
                              {"t": lease.task_id}).scalar()
    return Beat.CANCELLED if status == Status.CANCELLED.value else Beat.LOST


def advance(db_engine: Engine, lease: Lease, next_stage: str | None, *,
            succeeded_s: float | None = None, **fields: Any) -> bool:
    """The stage succeeded: release the lease and move to ``next_stage``.

    ``fields`` are extra columns to set (``status``, ``result_url`` ...). A status only
    moves forward. ``succeeded_s``: record the stage's ``succeeded`` event with that
    duration (seconds) in the same transaction. False when the lease was lost meanwhile,
    or the job was cancelled (ended) while a stage other than the callback ran: the
    outcome is discarded, no event recorded (:func:`is_cancelled` tells which).
    """
    sets = ["lease_owner = NULL", "lease_stage = NULL", "lease_expires_at = NULL",
            "updated_at = now()"]
    params: dict[str, Any] = {"t": lease.task_id, "owner": lease.owner}
    if next_stage is not None:
        # attempts count the tries of the current stage; the next one starts afresh.
        sets.extend(["stage = :next_stage", "attempts = 0"])
        params["next_stage"] = next_stage
    status = fields.pop("status", None)
    if status is not None:
        sets.append(f"status = CASE WHEN {rank_case()} < :new_rank THEN :new_status "
                    "ELSE status END")
        params["new_status"] = Status(status).value
        params["new_rank"] = RANK[Status(status)]
    for name, value in fields.items():
        sets.append(f"{name} = :f_{name}")
        params[f"f_{name}"] = value
    params.update(stage=lease.stage, event_owner=lease.owner, attempt=lease.attempt,
                  duration=succeeded_s, record=succeeded_s is not None,
                  wake=lease.stage == "gpu" or (status is not None and Status(status).final))
    # A job cancelled (or otherwise ended) while its stage ran is not moved on: the
    # stage's outcome is discarded (the callback stage alone runs on final jobs).
    open_only = "" if lease.stage == "callback" else f" AND status NOT IN ({_FINAL})"
    # One statement (one round trip, atomic on its own): the move, its ``succeeded``
    # event, and the dispatcher's wake when a window slot frees (sent at its commit).
    with single_statements(db_engine) as conn:
        row = conn.execute(text(f"""
            WITH moved AS (
                UPDATE tasks SET {', '.join(sets)}
                WHERE task_id = :t AND lease_owner = :owner{open_only}
                RETURNING task_id, kafka_topic
            ), succeeded AS (
                INSERT INTO task_events (task_id, stage, event, worker, attempt, duration_s)
                SELECT task_id, :stage, 'succeeded', :event_owner, :attempt, :duration
                FROM moved WHERE :record
            )
            SELECT task_id, CASE WHEN :wake THEN pg_notify('{wake.CHANNEL}', kafka_topic)::text
                                 END AS woken
            FROM moved
        """), params).first()
    return row is not None


def is_cancelled(db_engine: Engine, task_id: str) -> bool:
    """Whether the task is ``cancelled`` now."""
    with db_engine.connect() as conn:
        return conn.execute(text("SELECT status FROM tasks WHERE task_id = :t"),
                            {"t": task_id}).scalar() == Status.CANCELLED.value


def release(db_engine: Engine, lease: Lease) -> bool:
    """Give the lease back without moving on (before a retry). False when it was not
    ours any more (taken over, or cleared by the reconciler, which re-sent the stage)."""
    with db_engine.begin() as conn:
        result = conn.execute(text("""
            UPDATE tasks SET lease_owner = NULL, lease_stage = NULL,
                lease_expires_at = NULL, updated_at = now()
            WHERE task_id = :t AND lease_owner = :owner
        """), {"t": lease.task_id, "owner": lease.owner})
    return result.rowcount == 1


class Ending(enum.Enum):
    FAILED = "failed"  #: the job is final now with our outcome, our lease dropped
    FINAL = "final"  #: it was final already (cancelled meanwhile); our lease dropped
    LOST = "lost"  #: the lease is not ours: another copy owns the stage and the outcome


def fail(db_engine: Engine, lease: Lease, status: Status, error_code: str | None,
         error_message: str | None) -> Ending:
    """The stage failed for good: move the task to ``status`` (final) and drop the lease,
    only while the lease is still ``lease``'s. A stage whose worker was frozen or cut off
    past its lease must not fail a job another worker took over (and may be finishing).

    A retry of this write after a database error whose commit did land finds the lease
    gone and the task already ``status`` with ``error_code``: that is our own outcome
    (``FAILED``)."""
    assert status.final
    with db_engine.begin() as conn:
        row = conn.execute(text(
            "SELECT status, error_code, lease_owner FROM tasks WHERE task_id = :t FOR UPDATE"),
            {"t": lease.task_id}).mappings().first()
        if row is None:
            return Ending.LOST
        if row["lease_owner"] != lease.owner:
            mine = (row["lease_owner"] is None and row["status"] == status.value
                    and row["error_code"] == error_code)
            return Ending.FAILED if mine else Ending.LOST
        final = Status(row["status"]).final
        outcome = "" if final else """, status = :status, finished_at = now(),
                error_code = coalesce(:code, error_code),
                error_message = coalesce(:message, error_message)"""
        conn.execute(text(f"""
            UPDATE tasks SET lease_owner = NULL, lease_stage = NULL, lease_expires_at = NULL,
                updated_at = now(){outcome}
            WHERE task_id = :t
        """), {"t": lease.task_id, "status": status.value, "code": error_code,
               "message": error_message})
    return Ending.FINAL if final else Ending.FAILED


def hand_off(db_engine: Engine, task_id: str, stage: str, owner: str) -> bool:
    """Leave ``stage`` of the task to the reconciler: its message could not be published.

    Sets an already expired lease on ``stage`` (kept when ``owner`` still holds one), so
    the next sweep publishes the stage again. False when another live owner holds it (its
    own outcome follows) or the task is gone.
    """
    with db_engine.begin() as conn:
        result = conn.execute(text("""
            UPDATE tasks SET lease_owner = coalesce(lease_owner, :marker),
                lease_stage = :stage, lease_expires_at = now(), updated_at = now()
            WHERE task_id = :t
              AND (lease_owner IS NULL OR lease_owner = :owner OR lease_expires_at < now())
        """), {"t": task_id, "stage": stage, "owner": owner, "marker": f"handoff:{owner}"})
    return result.rowcount == 1


def current(db_engine: Engine, task_id: str) -> dict[str, Any] | None:
    """The task's row as it is now (None: no such task)."""
    with db_engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                           {"t": task_id}).mappings().first()
    return dict(row) if row is not None else None
