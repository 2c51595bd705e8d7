"""A database error anywhere in a stage is a retry with backoff that keeps the lease token,
never an outcome that drops the message (against the real PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from pipeline.settings import Settings
from pipeline.stages.runner import StageContext, StageOutcome, run_stage
from pipeline.state import leases
from pipeline.state.db import make_db_engine
from tests.pipeline.stages.conftest import task_events, task_row
from tests.support.server import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def fast(fast: Settings) -> Settings:
    return fast.model_copy(update={"db_retry_s": 1.0})


def _ok(ctx: StageContext) -> dict[str, Any]:
    return {}


def _counted(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {"stage": "preprocess",
                                            "code": "database.unavailable"}) or 0.0


def test_postgres_unreachable_at_acquire_is_a_retry(fast: Settings, task_id: str) -> None:
    down = make_db_engine(fast.model_copy(update={"pg_port": free_port()}))
    failed, retried = (_counted("sonic_task_failed_total"),
                       _counted("sonic_stage_retries_total"))
    try:
        for retries in (0, 3, 20):
            result = run_stage(fast, down, task_id, "preprocess", _ok, retries=retries)
            assert result.outcome is StageOutcome.RETRY
            assert result.error.code == "database.unavailable" and result.error.retryable
            assert result.owner and 0 <= result.delay_s <= 30.0
    finally:
        down.dispose()
    # counted as retries, not as failed jobs (the failure-rate alert reads the latter)
    assert _counted("sonic_stage_retries_total") - retried == 3
    assert _counted("sonic_task_failed_total") == failed


def _drop(kind: str) -> Exception:
    if kind == "operational":
        return OperationalError("UPDATE tasks", {}, Exception("server closed the connection"))
    if kind == "interface":
        return InterfaceError("SELECT 1", {}, Exception("connection already closed"))
    return DBAPIError("COMMIT", {}, Exception("terminating connection"),
                      connection_invalidated=True)


@pytest.mark.parametrize("kind", ["operational", "interface", "invalidated"])
def test_a_database_error_inside_the_stage_keeps_the_lease_for_the_retry(
        fast: Settings, db_engine: Engine, task_id: str, kind: str) -> None:
    runs = []

    def stage(ctx: StageContext) -> dict[str, Any]:
        runs.append(ctx.lease.owner)
        if len(runs) == 1:
            raise _drop(kind)
        return {}

    first = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert first.outcome is StageOutcome.RETRY and first.error.code == "database.unavailable"
    row = task_row(db_engine, task_id)
    assert row["lease_owner"] == first.owner and row["status"] == "running"
    # Another copy of the message (a redelivery) still finds the lease held.
    assert run_stage(fast, db_engine, task_id, "preprocess", stage).outcome is StageOutcome.SKIP
    # The retry carries the token: it takes its lease back, without a new attempt.
    second = run_stage(fast, db_engine, task_id, "preprocess", stage, owner=first.owner)
    assert second.outcome is StageOutcome.CONTINUE
    row = task_row(db_engine, task_id)
    assert (row["stage"], row["lease_owner"]) == ("gpu", None)
    assert runs == [first.owner, first.owner]
    assert task_events(db_engine, task_id) == ["started", "skipped", "started", "succeeded"]


def test_a_failed_advance_is_retried_in_place(fast: Settings, db_engine: Engine,
                                              task_id: str, monkeypatch) -> None:
    real, calls = leases.advance, []

    def flaky(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) <= 2:
            raise _drop("operational")
        return real(*args, **kwargs)

    monkeypatch.setattr(leases, "advance", flaky)
    result = run_stage(fast, db_engine, task_id, "preprocess", _ok)
    assert result.outcome is StageOutcome.CONTINUE and len(calls) == 3
    assert task_row(db_engine, task_id)["stage"] == "gpu"


def test_an_advance_that_committed_but_raised_continues_the_chain(
        fast: Settings, db_engine: Engine, task_id: str, monkeypatch) -> None:
    real, runs = leases.advance, []

    def committed_then_raised(*args: Any, **kwargs: Any) -> bool:
        real(*args, **kwargs)
        raise _drop("operational")

    def stage(ctx: StageContext) -> dict[str, Any]:
        runs.append(1)
        return {}

    monkeypatch.setattr(leases, "advance", committed_then_raised)
    first = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert first.outcome is StageOutcome.RETRY and first.owner
    monkeypatch.setattr(leases, "advance", real)
    # The retry finds its stage done by its own token: it continues the chain, no re-run.
    again = run_stage(fast, db_engine, task_id, "preprocess", stage, owner=first.owner)
    assert again.outcome is StageOutcome.CONTINUE and runs == [1]
    # A plain duplicate (no token) still stops.
    assert run_stage(fast, db_engine, task_id, "preprocess", stage).outcome is StageOutcome.SKIP
    assert task_events(db_engine, task_id)[-2:] == ["resumed", "skipped"]


def test_a_failure_whose_finish_committed_but_raised_still_sends_the_callback(
        fast: Settings, db_engine: Engine, task_id: str, monkeypatch) -> None:
    from pipeline.errors import AudioError

    real = leases.fail

    def committed_then_raised(*args: Any, **kwargs: Any) -> leases.Ending:
        real(*args, **kwargs)
        raise _drop("operational")

    def stage(ctx: StageContext) -> dict[str, Any]:
        raise AudioError("silent", code="audio.silent")

    monkeypatch.setattr(leases, "fail", committed_then_raised)
    first = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert first.outcome is StageOutcome.RETRY
    monkeypatch.setattr(leases, "fail", real)
    again = run_stage(fast, db_engine, task_id, "preprocess", stage, owner=first.owner)
    assert again.outcome is StageOutcome.FAILED  # the glue sends the callback
    assert task_row(db_engine, task_id)["error_code"] == "audio.silent"


def test_reacquiring_with_the_same_token_is_not_a_new_attempt(db_engine: Engine,
                                                              task_id: str) -> None:
    first = leases.acquire(db_engine, task_id, "preprocess", "token-1", 30)
    again = leases.acquire(db_engine, task_id, "preprocess", "token-1", 30)
    assert isinstance(first, leases.Lease) and isinstance(again, leases.Lease)
    assert (first.attempt, again.attempt) == (1, 1)
    leases.release(db_engine, again)
    third = leases.acquire(db_engine, task_id, "preprocess", "token-2", 30)
    assert isinstance(third, leases.Lease) and third.attempt == 2


def test_a_hand_off_is_an_expired_lease_on_the_owed_stage(db_engine: Engine,
                                                          task_id: str) -> None:
    lease = leases.acquire(db_engine, task_id, "preprocess", "token-1", 30)
    assert isinstance(lease, leases.Lease) and leases.advance(db_engine, lease, "gpu")
    assert leases.hand_off(db_engine, task_id, "gpu", "token-1")
    row = task_row(db_engine, task_id)
    assert (row["lease_owner"], row["lease_stage"]) == ("handoff:token-1", "gpu")
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT lease_expires_at <= now() FROM tasks "
                                 "WHERE task_id = :t"), {"t": task_id}).scalar()
    # Any copy of the owed stage may take it at once.
    taken = leases.acquire(db_engine, task_id, "gpu", "worker-9", 30)
    assert isinstance(taken, leases.Lease) and taken.attempt == 1
    # A live lease is never handed off from under its holder.
    assert not leases.hand_off(db_engine, task_id, "gpu", "token-1")
