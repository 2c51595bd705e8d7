"""The stage's watchdog stops the work itself, whether or not the stage polls should_stop:
a lost lease, a cancel and a spent budget each stop it within one heartbeat."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.settings import Settings
from pipeline.stages.runner import StageContext, StageOutcome, run_stage
from pipeline.state import journal
from pipeline.state.status import Status
from tests.pipeline.stages.conftest import insert_task, task_events, task_row

pytestmark = pytest.mark.integration

#: Heartbeat interval of these tests, seconds.
BEAT = 1


@pytest.fixture
def task_id(db_engine: Engine, unique: str) -> str:
    return insert_task(db_engine, f"watchdog-{unique}", stage="gpu")


@pytest.fixture
def fast(fast: Settings) -> Settings:
    return fast.model_copy(update={"heartbeat_interval_s": BEAT})


def _busy(seconds: float) -> None:
    """Pure Python work that never asks should_stop (a runaway loop in an engine)."""
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def _stubborn(seconds: float) -> None:
    """An engine loop that swallows every Exception and carries on."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            _busy(0.05)
        except Exception:  # noqa: BLE001 - on purpose
            pass


def _steal_later(db_engine: Engine, task_id: str, started: threading.Event,
                 when: list[float]) -> threading.Thread:
    def steal() -> None:
        started.wait(10)
        time.sleep(0.3)
        with db_engine.begin() as conn:
            conn.execute(text("UPDATE tasks SET lease_owner = 'thief' WHERE task_id = :t"),
                         {"t": task_id})
        when.append(time.monotonic())

    thread = threading.Thread(target=steal)
    thread.start()
    return thread


@pytest.mark.parametrize("work", [_busy, _stubborn, time.sleep])
def test_a_lost_lease_stops_work_that_never_polls(fast: Settings, db_engine: Engine,
                                                  task_id: str, work: Any) -> None:
    started, when = threading.Event(), []

    def stage(ctx: StageContext) -> dict[str, Any]:
        started.set()
        for _ in range(60):  # 60 "batches" of half a second, no should_stop
            work(0.5)
        raise AssertionError("the lost lease was never noticed")

    thief = _steal_later(db_engine, task_id, started, when)
    result = run_stage(fast, db_engine, task_id, "gpu", stage)
    stopped = time.monotonic()
    thief.join()
    assert result.outcome is StageOutcome.SKIP
    # Within one heartbeat of the theft, plus one "batch" for a blocking call.
    assert stopped - when[0] < BEAT + 0.5 + 0.5, stopped - when[0]
    assert task_events(db_engine, task_id)[-1] == "lease_lost"
    assert task_row(db_engine, task_id)["lease_owner"] == "thief"


def test_a_cancel_stops_the_work_and_drops_the_lease(fast: Settings, db_engine: Engine,
                                                     task_id: str) -> None:
    def stage(ctx: StageContext) -> dict[str, Any]:
        journal.finish(db_engine, task_id, Status.CANCELLED, error_code="task.cancelled",
                       error_message="cancelled by upstream")
        _stubborn(30)
        raise AssertionError("the cancel was never noticed")

    begun = time.monotonic()
    assert run_stage(fast, db_engine, task_id, "gpu", stage).outcome is StageOutcome.SKIP
    assert time.monotonic() - begun < BEAT + 1.0
    row = task_row(db_engine, task_id)
    assert (row["status"], row["error_code"], row["lease_owner"]) == (
        "cancelled", "task.cancelled", None)
    assert task_events(db_engine, task_id)[-1] == "cancelled"


@pytest.mark.parametrize("polls", [True, False])
def test_a_spent_budget_fails_the_stage_with_stage_timeout(fast: Settings, db_engine: Engine,
                                                          task_id: str, polls: bool) -> None:
    def stage(ctx: StageContext) -> dict[str, Any]:
        ctx.limit_time(1.5)
        for _ in range(600):
            _busy(0.05)
            if polls:
                ctx.should_stop()
        raise AssertionError("the budget was never enforced")

    begun = time.monotonic()
    result = run_stage(fast, db_engine, task_id, "gpu", stage)
    took = time.monotonic() - begun
    assert result.outcome is StageOutcome.FAILED and result.error.code == "stage.timeout"
    assert 1.5 <= took < 1.5 + 0.5, took
    row = task_row(db_engine, task_id)
    assert (row["status"], row["error_code"], row["lease_owner"]) == (
        "failed", "stage.timeout", None)
    assert "budget of 2 s" in row["error_message"] or "budget of 1 s" in row["error_message"]


def test_a_passed_deadline_stops_work_that_never_polls(fast: Settings, db_engine: Engine,
                                                       task_id: str) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET deadline = now() + interval '1 s' "
                          "WHERE task_id = :t"), {"t": task_id})

    def stage(ctx: StageContext) -> dict[str, Any]:
        _stubborn(30)
        raise AssertionError("the deadline was never noticed")

    begun = time.monotonic()
    result = run_stage(fast, db_engine, task_id, "gpu", stage)
    assert result.outcome is StageOutcome.FAILED and result.error.code == "task.deadline"
    assert time.monotonic() - begun < 1 + BEAT + 0.5
    assert task_row(db_engine, task_id)["error_code"] == "task.deadline"


def test_work_that_ends_in_time_is_never_interrupted_afterwards(
        fast: Settings, db_engine: Engine, task_id: str) -> None:
    def stage(ctx: StageContext) -> dict[str, Any]:
        ctx.limit_time(0.8)
        _busy(0.7)
        return {}

    assert run_stage(fast, db_engine, task_id, "gpu", stage).outcome is StageOutcome.CONTINUE
    time.sleep(BEAT + 0.5)  # nothing is left pending for this thread
    _busy(0.2)
    assert task_row(db_engine, task_id)["stage"] == "encode"
