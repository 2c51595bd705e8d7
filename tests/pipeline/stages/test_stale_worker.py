"""A stage that lost its lease while it ran (its worker frozen past the lease, or cut off
from the database) and then ends badly changes nothing: the worker that took the stage
over owns the job. Found by the frozen-worker chaos scenario (tests/chaos).

Each case takes the lease over from inside the stage (as the reconciler and another
worker do while this one is frozen), then ends the stage one failing way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.errors import AudioError, CallbackRetry, PermanentError, StorageError
from pipeline.settings import Settings
from pipeline.stages.runner import StageContext, StageOutcome, run_stage
from tests.pipeline.stages.conftest import task_events, task_row

pytestmark = pytest.mark.integration

TAKER = "taker:1:abc"


def _take_over(ctx: StageContext) -> None:
    """Another worker holds the stage now (this one's lease expired and was claimed)."""
    with ctx.db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET lease_owner = :o, lease_expires_at = now() + "
                          "interval '30 s', attempts = attempts + 1 WHERE task_id = :t"),
                     {"o": TAKER, "t": ctx.task_id})


def _fails(error: BaseException):
    def stage(ctx: StageContext) -> dict[str, Any]:
        (ctx.workdir / "render.json").write_text("{}")  # the taker's work in progress
        _take_over(ctx)
        raise error
    return stage


#: kind -> (how the stale stage ends, max_attempts: 1 puts a recoverable error at the cap)
FAILURES = {
    "permanent": (AudioError("ffmpeg cannot decode audio.wav", code="audio.undecodable"), 3),
    "missing-artifact": (PermanentError("missing artifact render.json", code="task.lost"), 3),
    "internal": (KeyError("frames_path"), 3),
    "recoverable-at-cap": (StorageError("bucket down", code="storage.unavailable"), 1),
    "recoverable": (StorageError("bucket down", code="storage.unavailable"), 3),
}


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_stale_stage_failing_leaves_the_job_to_its_new_holder(
        fast: Settings, db_engine: Engine, task_id: str, kind: str) -> None:
    error, cap = FAILURES[kind]
    settings = fast.model_copy(update={"max_attempts": cap})
    result = run_stage(settings, db_engine, task_id, "preprocess", _fails(error))
    # SKIP: no failure callback, no retry message (a second copy of the stage).
    assert result.outcome is StageOutcome.SKIP, result
    row = task_row(db_engine, task_id)
    # Still the taker's: running, its lease, no error, nothing finished.
    assert (row["status"], row["lease_owner"], row["error_code"], row["finished_at"]) == (
        "running", TAKER, None, None)
    assert task_events(db_engine, task_id)[-1] == "lease_lost"
    assert "failed" not in task_events(db_engine, task_id)
    # The work dir the taker writes to is left alone.
    assert (Path(settings.work_dir) / task_id / "render.json").exists()


def test_a_stale_callback_retry_keeps_the_delivered_state(
        fast: Settings, db_engine: Engine, task_id: str) -> None:
    """The resumed callback stage's attempt timed out after the taker delivered."""
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET stage = 'callback', status = 'completed', "
                          "callback_url = 'http://127.0.0.1:9/hook' WHERE task_id = :t"),
                     {"t": task_id})

    def stage(ctx: StageContext) -> dict[str, Any]:
        _take_over(ctx)
        with ctx.db_engine.begin() as conn:  # the taker delivered and settled it
            conn.execute(text("UPDATE tasks SET callback_status = 'delivered', "
                              "callback_attempts = 1 WHERE task_id = :t"), {"t": ctx.task_id})
        from pipeline.stages import callback

        callback._set(ctx, "retrying", 2)
        raise CallbackRetry("receiver timed out")

    result = run_stage(fast, db_engine, task_id, "callback", stage, max_attempts=10 ** 6)
    assert result.outcome is StageOutcome.SKIP, result
    row = task_row(db_engine, task_id)
    assert (row["callback_status"], row["callback_attempts"], row["lease_owner"]) == (
        "delivered", 1, TAKER)


@pytest.mark.parametrize("settled", ["delivered", "failed", "none"])
def test_a_callback_copy_after_the_callback_settled_is_skipped(
        fast: Settings, db_engine: Engine, task_id: str, settled: str) -> None:
    """A copy of the callback stage that comes after it settled (the message of a worker
    killed before its ack, redelivered; a reconciler's re-send) neither runs it nor
    records a second success."""
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET stage = 'callback', status = 'completed', "
                          "started_at = now(), finished_at = now(), callback_status = :s, "
                          "callback_url = 'http://127.0.0.1:9/hook' WHERE task_id = :t"),
                     {"s": settled, "t": task_id})
    runs = []

    def stage(ctx: StageContext) -> dict[str, Any]:
        runs.append(1)
        return {}

    result = run_stage(fast, db_engine, task_id, "callback", stage)
    assert result.outcome is StageOutcome.SKIP and runs == []
    assert task_events(db_engine, task_id) == ["skipped"]
    assert task_row(db_engine, task_id)["callback_status"] == settled


@pytest.mark.parametrize("status", ["received", "waiting", "queued", "running"])
def test_a_callback_message_for_a_job_not_final_is_skipped(
        fast: Settings, db_engine: Engine, task_id: str, status: str) -> None:
    """A stray callback message (the dispatcher published an expired job's callback, then
    died before its expiry committed) leaves the job as it is, for the dispatcher to
    expire again; it never turns a job that did not start into a running one."""
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET status = :s, stage = NULL, "
                          "callback_url = 'http://127.0.0.1:9/hook' WHERE task_id = :t"),
                     {"s": status, "t": task_id})
    runs = []

    def stage(ctx: StageContext) -> dict[str, Any]:
        runs.append(1)
        return {"callback_status": "delivered"}

    result = run_stage(fast, db_engine, task_id, "callback", stage)
    assert result.outcome is StageOutcome.SKIP and runs == []
    row = task_row(db_engine, task_id)
    assert (row["status"], row["stage"], row["started_at"], row["callback_status"]) == (
        status, None, None, None)


def _takeovers(stage: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("sonic_lease_takeovers_total",
                                     {"stage": stage, "reason": "expired"}) or 0.0


@pytest.mark.parametrize("held", ["expired-by-another", "free", "own-token", "live"])
def test_a_claim_of_another_copy_s_expired_lease_is_counted_as_a_takeover(
        fast: Settings, db_engine: Engine, task_id: str, held: str) -> None:
    """A redelivered copy that claims a lease left by a dead worker is a takeover; a free
    stage, a retry with its own token and a live holder are not."""
    owner = "me:1:x"
    if held != "free":
        lease_owner = owner if held == "own-token" else TAKER
        expiry = "now() + interval '30 s'" if held == "live" else "now() - interval '1 s'"
        with db_engine.begin() as conn:
            conn.execute(text(f"UPDATE tasks SET lease_owner = :o, lease_stage = 'preprocess', "
                              f"lease_expires_at = {expiry}, status = 'running', "
                              f"stage = 'preprocess' WHERE task_id = :t"),
                         {"o": lease_owner, "t": task_id})
    before = _takeovers("preprocess")
    result = run_stage(fast, db_engine, task_id, "preprocess", lambda ctx: {},
                       owner=owner if held == "own-token" else None)
    counted = _takeovers("preprocess") - before
    if held == "live":
        assert result.outcome is StageOutcome.SKIP and counted == 0
    else:
        assert result.outcome is StageOutcome.CONTINUE
        assert counted == (1 if held == "expired-by-another" else 0)
