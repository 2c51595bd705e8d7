"""Run one stage of one task: lease, heartbeat, events, forward-only outcome.

Plain Python, no Celery: the thin task modules map the returned :class:`Outcome` onto
Celery (continue the chain, stop it, or retry later).

    claim lease --held/done--> SKIP (a duplicate copy: do nothing, stop this chain copy)
        |
    run stage fn (heart-beating) --ok--> advance stage --> CONTINUE
        |-- PermanentError --> task failed + code --> FAILED (callback follows)
        |-- RecoverableError --> release lease --> RETRY(delay), or FAILED after the cap
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from pipeline import metrics
from pipeline.errors import Cancelled, PermanentError, PipelineError, RecoverableError
from pipeline.settings import STAGES, Settings
from pipeline.state import journal, leases
from pipeline.state.status import Status
from pipeline.webhooks.retry import backoff_delay

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    CONTINUE = "continue"
    SKIP = "skip"
    FAILED = "failed"
    RETRY = "retry"


@dataclass
class Result:
    outcome: Outcome
    delay_s: float = 0.0
    error: PipelineError | None = None


class LeaseLost(Exception):
    """The lease expired and another worker took the stage over."""


@dataclass
class StageContext:
    """What a stage function gets: the task row, its work dir, progress and stop checks."""

    settings: Settings
    engine: Engine
    lease: leases.Lease
    workdir: Path
    _progress: float | None = None
    _lost: threading.Event = field(default_factory=threading.Event)

    @property
    def task(self) -> dict[str, Any]:
        return self.lease.row

    @property
    def task_id(self) -> str:
        return self.lease.task_id

    def progress(self, percent: float) -> None:
        """Record progress (written with the next heartbeat)."""
        self._progress = max(0.0, min(100.0, percent))

    def should_stop(self) -> bool:
        """True when the job must stop between batches: lease lost, cancelled, deadline."""
        if self._lost.is_set():
            raise LeaseLost(self.task_id)
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


def _heartbeat(ctx: StageContext, stop: threading.Event) -> None:
    interval = ctx.settings.heartbeat_interval_s
    while not stop.wait(interval):
        try:
            if not leases.heartbeat(ctx.engine, ctx.lease, ctx.settings.lease_ttl_s,
                                    ctx._progress):
                ctx._lost.set()
                return
        except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
            log.warning("heartbeat for %s failed", ctx.task_id, exc_info=True)


def run_stage(settings: Settings, engine: Engine, task_id: str, stage: str,
              fn: StageFn, owner: str | None = None, max_attempts: int | None = None) -> Result:
    """Run ``fn`` as ``stage`` of ``task_id``. ``max_attempts`` overrides the settings' cap
    (the callback stage retries by age instead)."""
    owner = owner or worker_id()
    claim = leases.acquire(engine, task_id, stage, owner, settings.lease_ttl_s)
    if not isinstance(claim, leases.Lease):
        if claim is leases.Claim.MISSING:
            log.warning("stage %s of unknown task %s", stage, task_id)
        else:
            journal.record(engine, task_id, stage, "skipped", worker=owner,
                           detail={"reason": claim.value})
        return Result(Outcome.SKIP)
    ctx = StageContext(settings, engine, claim, settings.work_dir / task_id)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    journal.record(engine, task_id, stage, "started", worker=owner, attempt=claim.attempt)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(ctx, stop), daemon=True)
    beat.start()
    started = time.monotonic()
    try:
        fields = fn(ctx)
    except LeaseLost:
        journal.record(engine, task_id, stage, "lease_lost", worker=owner,
                       attempt=claim.attempt)
        return Result(Outcome.SKIP)
    except PermanentError as exc:
        return _failed(ctx, exc, time.monotonic() - started)
    except RecoverableError as exc:
        cap = max_attempts if max_attempts is not None else settings.max_attempts
        return _retry(ctx, exc, time.monotonic() - started, cap)
    finally:
        stop.set()
        beat.join(timeout=5)
    duration = time.monotonic() - started
    fields = dict(fields or {})
    if not leases.advance(engine, claim, next_stage(stage), **fields):
        journal.record(engine, task_id, stage, "lease_lost", worker=owner,
                       attempt=claim.attempt, duration_s=duration)
        return Result(Outcome.SKIP)
    journal.record(engine, task_id, stage, "succeeded", worker=owner, attempt=claim.attempt,
                   duration_s=duration)
    metrics.observe_stage(stage, "succeeded", duration)
    return Result(Outcome.CONTINUE)


def _failed(ctx: StageContext, exc: PipelineError, duration: float) -> Result:
    lease = ctx.lease
    status = Status.CANCELLED if exc.code == "task.cancelled" else Status.FAILED
    journal.finish(ctx.engine, lease.task_id, status, owner=lease.owner,
                   error_code=exc.code, error_message=exc.message)
    journal.record(ctx.engine, lease.task_id, lease.stage, "failed", worker=lease.owner,
                   attempt=lease.attempt, duration_s=duration, detail=exc.as_dict())
    metrics.observe_stage(lease.stage, "failed", duration)
    metrics.count_failure(lease.stage, exc.code)
    return Result(Outcome.FAILED, error=exc)


def _retry(ctx: StageContext, exc: PipelineError, duration: float, cap: int) -> Result:
    lease = ctx.lease
    if lease.attempt >= cap:
        return _failed(ctx, exc, duration)
    leases.release(ctx.engine, lease)
    # A stage may name its own delay (a receiver's Retry-After); else exponential backoff.
    delay = float(exc.detail.get("delay_s") or backoff_delay(lease.attempt))
    journal.record(ctx.engine, lease.task_id, lease.stage, "retrying", worker=lease.owner,
                   attempt=lease.attempt, duration_s=duration,
                   detail={**exc.as_dict(), "delay_s": round(delay, 3)})
    metrics.observe_stage(lease.stage, "retrying", duration)
    return Result(Outcome.RETRY, delay_s=delay, error=exc)
