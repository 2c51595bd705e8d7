"""callback (io): POST the outcome to ``callback_url``, signed, retried by age.

Runs for completed and failed jobs alike. It never changes the task's status: a callback
that fails for good only sets ``callback_status = 'failed'``.

Each delivery passes its destination's flow control first (:mod:`pipeline.webhooks.flow`):
one held back by an open breaker or a full rate window makes no request and is not an
attempt (``callback_attempts`` stays); it is a ``delivery`` event with ``reason``
``breaker_open`` or ``rate_limited`` and a retry after the flow's delay. The max age
(``SONIC_WEBHOOK_MAX_AGE_S``, from the first try) bounds held-back time too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import text

from pipeline import metrics
from pipeline.errors import CallbackPaused, CallbackRetry, PermanentError
from pipeline.inputs.urls import check_callback_url
from pipeline.stages.runner import StageContext
from pipeline.state import journal
from pipeline.webhooks import build_payload, deliver, message_id, retry_delay, should_give_up
from pipeline.webhooks.flow import destination, flow_for

#: callback_status values that end the stage (a redelivery sends nothing).
SETTLED = frozenset({"delivered", "failed", "none"})

_TIMINGS = text("""
    SELECT stage, sum(duration_s) FROM task_events
    WHERE task_id = :t AND event = 'succeeded' AND stage <> 'callback' GROUP BY stage
""")
_FIRST_TRY = text("""
    SELECT min(at) FROM task_events WHERE task_id = :t AND stage = 'callback'
      AND event = 'started'
""")


def timings(ctx: StageContext) -> dict[str, Any]:
    task = ctx.task
    with ctx.db_engine.connect() as conn:
        stages = {stage: round(total, 3) for stage, total in conn.execute(
            _TIMINGS, {"t": ctx.task_id})}
    out: dict[str, Any] = {"stages_s": stages}
    if task.get("finished_at") and task.get("received_at"):
        out["total_s"] = round((task["finished_at"] - task["received_at"]).total_seconds(), 3)
    return out


def payload_of(ctx: StageContext) -> dict[str, Any]:
    task = ctx.task
    error = ({"code": task["error_code"], "message": task["error_message"]}
             if task.get("error_code") else None)
    return build_payload(task["task_id"], task["status"], video_url=task.get("result_url"),
                         error=error, timings=timings(ctx),
                         metadata=(task.get("payload") or {}).get("metadata"))


def run(ctx: StageContext) -> dict[str, Any]:
    task = ctx.task
    if task.get("callback_status") in SETTLED:
        return {}
    if not task.get("callback_url"):
        return {"callback_status": "none"}
    made = int(task.get("callback_attempts") or 0)
    attempt = made + 1
    url, settings = task["callback_url"], ctx.settings
    try:
        host = destination(check_callback_url(url, settings))
        result = flow_for(settings).send(host, lambda: _measured(host, lambda: deliver(
            url, payload_of(ctx), message_id(ctx.task_id, task["status"]), settings,
            attempt=attempt)))
    except CallbackPaused as exc:  # no request was made: not an attempt
        journal.record(ctx.db_engine, ctx.task_id, "callback", "delivery", attempt=made,
                       detail=exc.as_dict())
        if _too_old(ctx):
            return {"callback_status": "failed", "callback_attempts": made}
        _set(ctx, "retrying", made)
        raise
    except CallbackRetry as exc:
        journal.record(ctx.db_engine, ctx.task_id, "callback", "delivery", attempt=attempt,
                       detail=exc.as_dict())
        if _too_old(ctx):
            return {"callback_status": "failed", "callback_attempts": attempt}
        _set(ctx, "retrying", attempt)
        exc.detail["delay_s"] = retry_delay(attempt, exc.detail.get("retry_after"))
        raise
    except PermanentError as exc:
        journal.record(ctx.db_engine, ctx.task_id, "callback", "delivery", attempt=attempt,
                       detail=exc.as_dict())
        return {"callback_status": "failed", "callback_attempts": attempt}
    journal.record(ctx.db_engine, ctx.task_id, "callback", "delivery", attempt=attempt,
                   duration_s=result.duration, detail={"status_code": result.status_code})
    return {"callback_status": "delivered", "callback_attempts": attempt}


T = TypeVar("T")


def _measured(host: str, attempt: Callable[[], T]) -> T:
    """Make one attempt; count its outcome and seconds for ``host`` (a request that was
    not allowed to leave, ``input.forbidden_url``, is no attempt)."""
    began = time.monotonic()
    try:
        result = attempt()
    except CallbackRetry:
        metrics.observe_callback(host, "retry", time.monotonic() - began)
        raise
    except PermanentError as exc:
        if exc.code == "callback.rejected":
            metrics.observe_callback(host, "rejected", time.monotonic() - began)
        raise
    metrics.observe_callback(host, "delivered", time.monotonic() - began)
    return result


def _too_old(ctx: StageContext) -> bool:
    """True once ``SONIC_WEBHOOK_MAX_AGE_S`` has passed since the callback's first try."""
    with ctx.db_engine.connect() as conn:
        first = conn.execute(_FIRST_TRY, {"t": ctx.task_id}).scalar()
    now = datetime.now(timezone.utc)
    return first is not None and should_give_up(first, now, ctx.settings.webhook_max_age_s)


def _set(ctx: StageContext, status: str, attempts: int) -> None:
    """Record a callback still under way, only while this copy holds the stage's lease (a
    copy resumed past its lease must not undo the state the new holder settled)."""
    with ctx.db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET callback_status = :s, callback_attempts = :a "
                          "WHERE task_id = :t AND lease_owner = :owner"),
                     {"s": status, "a": attempts, "t": ctx.task_id, "owner": ctx.lease.owner})
