"""Stage runs against the real PostgreSQL: leases, forward-only status, typed outcomes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.errors import AudioError, StorageError
from pipeline.settings import Settings
from pipeline.stages.runner import StageContext, StageOutcome, run_stage
from pipeline.state import journal, leases
from pipeline.state.status import Status
from tests.pipeline.stages.conftest import task_events, task_row

pytestmark = pytest.mark.integration


def test_one_live_lease_per_stage(db_engine: Engine, task_id: str) -> None:
    first = leases.acquire(db_engine, task_id, "preprocess", "w1", ttl_s=30)
    assert isinstance(first, leases.Lease) and first.attempt == 1
    # A redelivered copy on another worker finds the lease live and backs off.
    assert leases.acquire(db_engine, task_id, "preprocess", "w2", ttl_s=30) is leases.Claim.HELD
    # The first holder dies: its lease expires, the next claim takes over.
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET lease_expires_at = now() - interval '1 s' "
                          "WHERE task_id = :t"), {"t": task_id})
    second = leases.acquire(db_engine, task_id, "preprocess", "w2", ttl_s=30)
    assert isinstance(second, leases.Lease) and second.attempt == 2
    # The zombie's late outcome is discarded.
    assert leases.advance(db_engine, first, "gpu") is False
    assert leases.advance(db_engine, second, "gpu") is True
    row = task_row(db_engine, task_id)
    assert (row["stage"], row["lease_owner"], row["attempts"]) == ("gpu", None, 0)
    # The finished stage is never claimed again.
    assert leases.acquire(db_engine, task_id, "preprocess", "w3", 30) is leases.Claim.DONE


def test_success_advances_and_records_events(fast: Settings, db_engine: Engine,
                                             task_id: str) -> None:
    def stage(ctx: StageContext) -> dict[str, Any]:
        assert ctx.workdir.is_dir() and ctx.task["status"] == "running"
        ctx.progress(50)
        return {}

    result = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert result.outcome is StageOutcome.CONTINUE
    row = task_row(db_engine, task_id)
    assert (row["status"], row["stage"], row["lease_owner"]) == ("running", "gpu", None)
    assert task_events(db_engine, task_id, "stage", "event") == [("preprocess", "started"),
                                           ("preprocess", "succeeded")]
    # A duplicate delivery of the same stage does nothing and stops its chain copy.
    again = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert again.outcome is StageOutcome.SKIP
    assert task_events(db_engine, task_id, "stage", "event")[-1] == ("preprocess", "skipped")


def test_permanent_error_fails_at_once_with_its_code(fast: Settings, db_engine: Engine,
                                                     task_id: str) -> None:
    calls = []

    def stage(ctx: StageContext) -> dict[str, Any]:
        calls.append(1)
        raise AudioError("ffmpeg cannot decode audio.mp3", code="audio.undecodable")

    result = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert result.outcome is StageOutcome.FAILED and result.error.code == "audio.undecodable"
    row = task_row(db_engine, task_id)
    assert (row["status"], row["error_code"]) == ("failed", "audio.undecodable")
    assert row["finished_at"] is not None and row["lease_owner"] is None
    # No retry storm: a redelivery of the failed stage does not run it again.
    assert run_stage(fast, db_engine, task_id, "preprocess", stage).outcome is StageOutcome.SKIP
    assert len(calls) == 1


def test_recoverable_error_retries_then_fails_after_the_cap(fast: Settings,
                                                            db_engine: Engine,
                                                            task_id: str) -> None:
    def stage(ctx: StageContext) -> dict[str, Any]:
        raise StorageError("object store answered 503")

    first = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert first.outcome is StageOutcome.RETRY and first.delay_s >= 0
    assert task_row(db_engine, task_id)["lease_owner"] is None  # released for the retry
    second = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert second.outcome is StageOutcome.FAILED  # max_attempts=2
    assert task_row(db_engine, task_id)["error_code"] == "storage.unavailable"
    assert [e for _, e in task_events(db_engine, task_id, "stage", "event")] == [
        "started", "retrying", "started", "failed"]


def test_a_late_event_never_moves_a_task_backwards(db_engine: Engine, task_id: str) -> None:
    assert journal.finish(db_engine, task_id, Status.COMPLETED)
    assert not journal.finish(db_engine, task_id, Status.FAILED, error_code="x.late")
    row = task_row(db_engine, task_id)
    assert (row["status"], row["error_code"]) == ("completed", None)


def test_lost_lease_stops_the_stage_between_batches(fast: Settings, db_engine: Engine,
                                                    task_id: str) -> None:
    started = threading.Event()

    def steal() -> None:
        started.wait(10)
        with db_engine.begin() as conn:
            conn.execute(text("UPDATE tasks SET lease_owner = 'thief' WHERE task_id = :t"),
                         {"t": task_id})

    def stage(ctx: StageContext) -> dict[str, Any]:
        started.set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ctx.should_stop()
            time.sleep(0.1)
        raise AssertionError("the lost lease was never noticed")

    thief = threading.Thread(target=steal)
    thief.start()
    result = run_stage(fast, db_engine, task_id, "preprocess", stage)
    thief.join()
    assert result.outcome is StageOutcome.SKIP
    assert task_events(db_engine, task_id, "stage", "event")[-1] == ("preprocess", "lease_lost")
    assert task_row(db_engine, task_id)["lease_owner"] == "thief"


def test_progress_is_written_while_the_stage_runs(fast: Settings, db_engine: Engine,
                                                  task_id: str) -> None:
    seen = []

    def stage(ctx: StageContext) -> dict[str, Any]:
        ctx.progress(42)
        time.sleep(1.6)  # more than one heartbeat interval
        seen.append(task_row(db_engine, task_id)["progress"])
        return {}

    assert run_stage(fast, db_engine, task_id, "gpu", stage).outcome is StageOutcome.CONTINUE
    assert seen == [42]


def test_a_passed_deadline_is_noticed_between_batches(fast: Settings, db_engine: Engine,
                                                      task_id: str) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET deadline = now() - interval '1 s' "
                          "WHERE task_id = :t"), {"t": task_id})
    batches = []

    def stage(ctx: StageContext) -> dict[str, Any]:
        for batch in range(10):
            ctx.should_stop()
            batches.append(batch)
        return {}

    # A stage after the first: a job under way is stopped at its deadline.
    result = run_stage(fast, db_engine, task_id, "gpu", stage)
    assert result.outcome is StageOutcome.FAILED and batches == []
    assert task_row(db_engine, task_id)["error_code"] == "task.deadline"


def test_a_job_past_its_deadline_never_starts(fast: Settings, db_engine: Engine,
                                             task_id: str) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET deadline = now() - interval '1 s' "
                          "WHERE task_id = :t"), {"t": task_id})
    ran = []
    result = run_stage(fast, db_engine, task_id, "preprocess", lambda ctx: ran.append(1) or {})
    assert result.outcome is StageOutcome.SKIP and ran == []
    row = task_row(db_engine, task_id)
    assert row["started_at"] is None and row["lease_owner"] is None  # the dispatcher expires it


def test_a_cancelled_task_stops_at_the_next_heartbeat(fast: Settings, db_engine: Engine,
                                                      task_id: str) -> None:
    def stage(ctx: StageContext) -> dict[str, Any]:
        journal.finish(db_engine, task_id, Status.CANCELLED, error_code="task.cancelled",
                       error_message="cancelled by upstream")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ctx.should_stop()
            time.sleep(0.1)
        raise AssertionError("the cancel was never noticed")

    assert run_stage(fast, db_engine, task_id, "gpu", stage).outcome is StageOutcome.SKIP
    row = task_row(db_engine, task_id)
    assert (row["status"], row["error_code"]) == ("cancelled", "task.cancelled")


@pytest.mark.parametrize("stage, fields", [
    ("preprocess", {}), ("gpu", {"progress": 90.0}), ("encode", {"progress": 95.0}),
    ("upload", {"status": "completed", "result_url": "https://cdn.example.com/v.mp4"})])
def test_a_stage_that_ends_after_its_job_was_cancelled_is_thrown_away(
        fast: Settings, db_engine: Engine, task_id: str, stage: str,
        fields: dict[str, Any]) -> None:
    """Cancelled between the stage's last check and its end: no success recorded, the
    job stays where it was (cancelled, no video), lease and work dir freed."""
    from pipeline.scheduler.cancel import cancel

    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET stage = :s WHERE task_id = :t"),
                     {"s": stage, "t": task_id})

    def ends_after_the_cancel(ctx: StageContext) -> dict[str, Any]:
        assert cancel(db_engine, [task_id]) == {task_id: "cancelled_running"}
        return dict(fields)

    result = run_stage(fast, db_engine, task_id, stage, ends_after_the_cancel)
    assert result.outcome is StageOutcome.SKIP
    row = task_row(db_engine, task_id)
    assert (row["status"], row["stage"], row["result_url"]) == ("cancelled", stage, None)
    assert row["lease_owner"] is None
    # the cancel's own event, then the stage's (as when a heartbeat sees the cancel)
    assert task_events(db_engine, task_id)[-3:] == ["started", "cancelled", "cancelled"]
    assert not (fast.work_dir / task_id).exists()
