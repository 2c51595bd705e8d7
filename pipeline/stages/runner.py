"""Run one stage of one task: lease, watchdog, events, forward-only outcome.

Plain Python, no Celery: :mod:`pipeline.stages.glue` maps the returned :class:`Result`
onto Celery (continue the chain, stop it, or retry later). Every way a stage can end has
an outcome and a code; nothing escapes but a dying process.

    claim lease --held/done--> SKIP (a duplicate copy: do nothing, stop this chain copy)
        |
    run stage fn, watched (heartbeat; lease lost, cancel, deadline, budget stop it at once)
        |-- returns --> advance stage --> CONTINUE
        |-- permanent error (ours, or any exception classified so) --> failed + code
        |       --> lease released, work dir removed --> FAILED (the callback follows)
        |-- recoverable error --> release lease --> RETRY(backoff), FAILED after the cap
        |-- lease lost / cancelled --> SKIP (the new holder, or the canceller, goes on)
        |-- budget or soft time limit --> stage.timeout --> FAILED
    a database error anywhere --> RETRY(backoff) with the same lease token (never dropped)

Unexpected exceptions are mapped by :func:`pipeline.faults.classify` (``internal.error``
with the traceback in ``task_events.detail`` for the rest).
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine

from pipeline import faults, metrics
from pipeline.errors import Cancelled, PipelineError, StageTimeout
from pipeline.housekeeping import remove_workdir
from pipeline.settings import STAGES, Settings
from pipeline.stages.artifacts import task_workdir
from pipeline.stages.watchdog import (BudgetExceeded, CancelledWhileRunning, DeadlinePassed,
                                      Interrupted, LeaseLost, Watchdog)
from pipeline.state import journal, leases
from pipeline.state.status import Status
from pipeline.webhooks.retry import backoff_delay

__all__ = ["LeaseLost", "Result", "StageContext", "StageFn", "StageOutcome", "run_stage"]

log = logging.getLogger(__name__)

#: Backoff of a stage retried after a database error: 1 s doubling, at most this (jittered).
DB_RETRY_CAP_S = 30.0

T = TypeVar("T")


class StageOutcome(enum.Enum):
    CONTINUE = "continue"
    SKIP = "skip"
    FAILED = "failed"
    RETRY = "retry"


@dataclass
class Result:
    outcome: StageOutcome
    delay_s: float = 0.0
    error: PipelineError | None = None
    #: The lease token a RETRY must carry (a database error: the lease may still be ours).
    owner: str | None = None


class StageContext:
    """What a stage function gets: the task row, its work dir, progress, stop checks and
    its time budget."""

    def __init__(self, settings: Settings, db_engine: Engine, lease: leases.Lease,
                 workdir: Path) -> None:
        self.settings = settings
        self.db_engine = db_engine
        self.lease = lease
        self.workdir = workdir
        self.started = time.monotonic()
        self.budget_s: float | None = None
        self._progress: float | None = None
        self._watchdog: Watchdog | None = None

    @property
    def task(self) -> dict[str, Any]:
        return self.lease.row

    @property
    def task_id(self) -> str:
        return self.lease.task_id

    def progress(self, percent: float) -> None:
        """Record progress (written with the next heartbeat)."""
        self._progress = max(0.0, min(100.0, percent))

    def limit_time(self, seconds: float) -> None:
        """Give the stage a budget of ``seconds`` from its start; past it the watchdog
        stops the work and the stage fails with ``stage.timeout``."""
        self.budget_s = max(0.0, float(seconds))

    def budget_deadline(self) -> float | None:
        """The monotonic time the budget ends (None: no budget)."""
        return None if self.budget_s is None else self.started + self.budget_s

    def should_stop(self) -> bool:
        """Raise when the job must stop (between batches): lease lost, cancelled, budget
        spent, deadline passed. Returns False otherwise."""
        reason = self._watchdog.reason if self._watchdog is not None else None
        if reason is not None:
            raise reason(self.task_id)
        end = self.budget_deadline()
        if end is not None and time.monotonic() >= end:
            raise BudgetExceeded(self.task_id)
        deadline = self.task.get("deadline")
        if deadline is not None and datetime.now(timezone.utc) > deadline:
            raise Cancelled(f"deadline {deadline.isoformat()} passed", code="task.deadline")
        return False


StageFn = Callable[[StageContext], dict[str, Any]]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def next_stage(stage: str) -> str | None:
    index = STAGES.index(stage)
    return STAGES[index + 1] if index + 1 < len(STAGES) else None


def run_stage(settings: Settings, db_engine: Engine, task_id: str, stage: str,
              fn: StageFn, owner: str | None = None, max_attempts: int | None = None,
              retries: int = 0) -> Result:
    """Run ``fn`` as ``stage`` of ``task_id``.

    ``owner``: the lease token of a retried copy (None: a fresh one). ``max_attempts``
    overrides the settings' cap (the callback stage retries by age instead). ``retries``:
    how often this message was retried already (sets the database backoff).
    """
    resumed = owner is not None
    owner = owner or worker_id()
    try:
        return _run(settings, db_engine, task_id, stage, fn, owner, resumed,
                    max_attempts if max_attempts is not None else settings.max_attempts)
    except Exception as exc:
        if not faults.is_database_error(exc):
            raise
        error = faults.classify(exc)
        delay = backoff_delay(retries + 1, base=1.0, cap=DB_RETRY_CAP_S)
        log.warning("stage %s of %s: %s; retried in %.1f s", stage, task_id, error, delay)
        # a retry, not a failed job: the failure-rate alert reads sonic_task_failed_total
        metrics.count_retry(stage, error.code)
        return Result(StageOutcome.RETRY, delay_s=delay, error=error, owner=owner)


def _run(settings: Settings, db_engine: Engine, task_id: str, stage: str, fn: StageFn,
         owner: str, resumed: bool, cap: int) -> Result:
    claim = leases.acquire(db_engine, task_id, stage, owner, settings.lease_ttl_s,
                           started=True)
    if not isinstance(claim, leases.Lease):
        return _not_claimed(db_engine, task_id, stage, owner, claim, resumed)
    if claim.took_over:  # another copy's lease had expired (its worker dead or frozen)
        metrics.count_takeover(stage, "expired")
    ctx = StageContext(settings, db_engine, claim, settings.work_dir / task_id)
    watchdog = Watchdog(lambda: _beat(ctx), settings.heartbeat_interval_s,
                        ctx.budget_deadline)
    ctx._watchdog = watchdog
    watchdog.start()
    try:
        try:
            with watchdog.armed():
                ctx.workdir = task_workdir(settings.work_dir, task_id)
                if stage != "callback":  # it reads nothing there (and it may be gone)
                    ctx.workdir.mkdir(parents=True, exist_ok=True)
                fields = fn(ctx)
        except LeaseLost as exc:
            return _stopped(ctx, exc)
        except BudgetExceeded:
            return _failed(ctx, StageTimeout(
                f"the {stage} stage ran past its budget of {ctx.budget_s:.0f} s",
                budget_s=ctx.budget_s), _since(ctx))
        except DeadlinePassed:
            deadline = ctx.task.get("deadline")
            return _failed(ctx, Cancelled(f"deadline {deadline} passed while the {stage} "
                                          "stage ran", code="task.deadline"), _since(ctx))
        except Exception as exc:
            if faults.is_database_error(exc):
                raise
            error = faults.classify(exc)
            if error.retryable:
                return _retry(ctx, error, _since(ctx), cap, exc)
            return _failed(ctx, error, _since(ctx), exc)
        return _succeeded(ctx, fields)
    finally:
        watchdog.stop()


def _since(ctx: StageContext) -> float:
    return time.monotonic() - ctx.started


def _engine(ctx: StageContext) -> str:
    """The engine label of the stage's metrics: the job's, else the default one."""
    return str(ctx.task.get("engine") or ctx.settings.default_engine)


def _beat(ctx: StageContext) -> type[Interrupted] | None:
    """One heartbeat: None, or why the stage must stop."""
    beat = leases.heartbeat(ctx.db_engine, ctx.lease, ctx.settings.lease_ttl_s, ctx._progress)
    if beat is leases.Beat.CANCELLED:
        return CancelledWhileRunning
    if beat is leases.Beat.LOST:
        return LeaseLost
    deadline = ctx.task.get("deadline")
    if deadline is not None and datetime.now(timezone.utc) > deadline:
        return DeadlinePassed
    return None


def _durably(settings: Settings, write: Callable[[], T]) -> T:
    """``write()``, retried in place on database errors for ``settings.db_retry_s``."""
    give_up = time.monotonic() + settings.db_retry_s
    attempt = 0
    while True:
        try:
            return write()
        except Exception as exc:
            attempt += 1
            if not faults.is_database_error(exc) or time.monotonic() >= give_up:
                raise
            time.sleep(min(0.25 * 2 ** min(attempt, 5), max(0.0, give_up - time.monotonic())))


def _record(db_engine: Engine, *args: Any, **kwargs: Any) -> None:
    """An event that must not undo an outcome already committed (best effort)."""
    try:
        journal.record(db_engine, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the outcome is in the tasks row already
        if not faults.is_database_error(exc):
            raise
        log.warning("event %s of %s not recorded: %s", args[2:3], args[0:1], exc)


def _not_claimed(db_engine: Engine, task_id: str, stage: str, owner: str, claim: leases.Claim,
                 resumed: bool) -> Result:
    if claim is leases.Claim.MISSING:
        log.warning("stage %s of unknown task %s", stage, task_id)
        return Result(StageOutcome.SKIP)
    if resumed and claim is leases.Claim.DONE:
        # A retry after a database error whose write did commit: finish what it began.
        row = leases.current(db_engine, task_id) or {}
        unsettled = row.get("callback_status") is None and stage != "callback"
        if row.get("lease_owner") is None and row.get("stage") == next_stage(stage) and \
                row.get("status") not in (Status.FAILED.value, Status.CANCELLED.value):
            _record(db_engine, task_id, stage, "resumed", worker=owner, detail={"then": "next"})
            return Result(StageOutcome.CONTINUE)
        if row.get("status") == Status.FAILED.value and row.get("stage") == stage and unsettled:
            _record(db_engine, task_id, stage, "resumed", worker=owner, detail={"then": "callback"})
            return Result(StageOutcome.FAILED)
    journal.record(db_engine, task_id, stage, "skipped", worker=owner,
                   detail={"reason": claim.value})
    return Result(StageOutcome.SKIP)


def _succeeded(ctx: StageContext, fields: dict[str, Any] | None) -> Result:
    lease, duration = ctx.lease, _since(ctx)
    values = dict(fields or {})
    def advance() -> bool:  # the succeeded event commits with the move
        return leases.advance(ctx.db_engine, lease, next_stage(lease.stage),
                              succeeded_s=duration, **values)

    if not _durably(ctx.settings, advance):
        if lease.stage != "callback" and leases.is_cancelled(ctx.db_engine, lease.task_id):
            # cancelled after its last check: the cancel wins, the work is thrown away
            return _stopped(ctx, CancelledWhileRunning(lease.task_id))
        return _lost(ctx, duration)
    metrics.observe_stage(lease.stage, "succeeded", duration, _engine(ctx))
    return Result(StageOutcome.CONTINUE)


def _lost(ctx: StageContext, duration: float) -> Result:
    """The stage ended but its lease is another copy's now (this worker was frozen or cut
    off past it): its outcome is discarded, the new holder's stands."""
    lease = ctx.lease
    _record(ctx.db_engine, lease.task_id, lease.stage, "lease_lost", worker=lease.owner,
            attempt=lease.attempt, duration_s=duration)
    metrics.count_takeover(lease.stage, "lost")
    return Result(StageOutcome.SKIP)


def _stopped(ctx: StageContext, exc: LeaseLost) -> Result:
    """The lease went to another copy, or the task was cancelled: stop, record, skip."""
    lease = ctx.lease
    cancelled = isinstance(exc, CancelledWhileRunning)
    if cancelled:  # nobody else will: the cancelled task keeps no lease nor work dir
        _durably(ctx.settings, lambda: leases.release(ctx.db_engine, lease))
        remove_workdir(ctx.settings, lease.task_id)
    _record(ctx.db_engine, lease.task_id, lease.stage, "cancelled" if cancelled else "lease_lost",
            worker=lease.owner, attempt=lease.attempt, duration_s=_since(ctx))
    metrics.observe_stage(lease.stage, "stopped", _since(ctx), _engine(ctx))
    if not cancelled:
        metrics.count_takeover(lease.stage, "lost")
    return Result(StageOutcome.SKIP)


def _detail(exc: PipelineError, cause: BaseException | None) -> dict[str, Any]:
    detail = exc.as_dict()
    if cause is not None and cause is not exc:
        detail["traceback"] = faults.traceback_text(cause)
    return detail


def _failed(ctx: StageContext, exc: PipelineError, duration: float,
            cause: BaseException | None = None) -> Result:
    lease = ctx.lease
    if lease.stage == "callback":
        # The job's outcome stands (a failed callback never fails a finished video):
        # settle the callback as failed and give the lease back.
        if not _durably(ctx.settings, lambda: leases.advance(ctx.db_engine, lease, None,
                                                             callback_status="failed")):
            return _lost(ctx, duration)
    else:
        status = Status.CANCELLED if exc.code == "task.cancelled" else Status.FAILED
        # Only while the lease is ours (final already, cancelled meanwhile: its outcome
        # stands and our lease is dropped); a lost lease leaves job and work dir alone.
        if _durably(ctx.settings, lambda: leases.fail(
                ctx.db_engine, lease, status, exc.code, exc.message)) is leases.Ending.LOST:
            return _lost(ctx, duration)
        remove_workdir(ctx.settings, lease.task_id)  # failed for good: nothing reads it
    _record(ctx.db_engine, lease.task_id, lease.stage, "failed", worker=lease.owner,
            attempt=lease.attempt, duration_s=duration, detail=_detail(exc, cause))
    metrics.observe_stage(lease.stage, "failed", duration, _engine(ctx))
    metrics.count_failure(lease.stage, exc.code)
    return Result(StageOutcome.FAILED, error=exc)


def _retry(ctx: StageContext, exc: PipelineError, duration: float, cap: int,
           cause: BaseException | None = None) -> Result:
    lease = ctx.lease
    if lease.attempt >= cap:
        return _failed(ctx, exc, duration, cause)
    if not leases.release(ctx.db_engine, lease):
        return _lost(ctx, duration)  # no retry: the stage is another copy's now
    # A stage may name its own delay (a receiver's Retry-After); else exponential backoff.
    delay = float(exc.detail.get("delay_s") or backoff_delay(lease.attempt))
    _record(ctx.db_engine, lease.task_id, lease.stage, "retrying", worker=lease.owner,
            attempt=lease.attempt, duration_s=duration,
            detail={**_detail(exc, cause), "delay_s": round(delay, 3)})
    metrics.observe_stage(lease.stage, "retrying", duration, _engine(ctx))
    metrics.count_retry(lease.stage, exc.code)
    return Result(StageOutcome.RETRY, delay_s=delay, error=exc)
