"""The callback stage behind flow control, on real PostgreSQL, Redis and receivers: a held-back
delivery makes no request, is no attempt, is a delivery event with its reason and a retry
after the flow's delay, never dropped; the max age still ends it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from pipeline.settings import Settings
from pipeline.stages import callback
from pipeline.stages.runner import StageOutcome, run_stage
from pipeline.webhooks.flow import PREFIX
from tests.pipeline.webhooks.test_flow_redis import FLOW_REDIS_DB, SECRET, flow_settings
from tests.support.receiver import CallbackReceiver, Reply

pytestmark = pytest.mark.integration

FAILURES = 3


@pytest.fixture
def hook_settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    yield flow_settings(webhook_breaker_failures=FAILURES, webhook_breaker_open_s=30.0,
                        work_dir=tmp_path, heartbeat_interval_s=1)
    client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=FLOW_REDIS_DB)
    for key in client.scan_iter(f"{PREFIX}*"):
        client.delete(key)


def _task(db_engine: Engine, task_id: str, url: str) -> str:
    with db_engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO tasks (task_id, status, stage, payload, callback_url, received_at,
                               finished_at, result_url)
            VALUES (:t, 'completed', 'callback', '{}', :u, now(), now(), 'https://cdn/x')
        """), {"t": task_id, "u": url})
    return task_id


def _run(settings: Settings, db_engine: Engine, task_id: str) -> Any:
    return run_stage(settings, db_engine, task_id, "callback", callback.run,
                     max_attempts=1_000_000)


def _row(db_engine: Engine, task_id: str) -> dict[str, Any]:
    with db_engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                 {"t": task_id}).mappings().one())


def _events(db_engine: Engine, task_id: str, event: str) -> list[tuple[int, dict[str, Any]]]:
    with db_engine.connect() as conn:
        return [(a, d) for a, d in conn.execute(text(
            "SELECT attempt, detail FROM task_events WHERE task_id = :t AND event = :e "
            "ORDER BY id"), {"t": task_id, "e": event})]


def test_an_open_breaker_delays_the_callback_without_an_attempt_and_spares_other_hosts(
        hook_settings: Settings, db_engine: Engine, unique: str) -> None:
    settings = hook_settings
    with CallbackReceiver(SECRET, [Reply(503)] * 100) as down, CallbackReceiver(SECRET) as up:
        dead = [_task(db_engine, f"cb-dead-{unique}-{i}", down.url("/hook")) for i in range(2)]
        live = _task(db_engine, f"cb-live-{unique}", up.url("/hook"))
        first = [_run(settings, db_engine, dead[0]) for _ in range(FAILURES)]
        held = [_run(settings, db_engine, task_id) for task_id in (dead[0], dead[1]) * 2]
        served = _run(settings, db_engine, live)
    assert [r.outcome for r in first + held] == [StageOutcome.RETRY] * (FAILURES + 4)
    assert len(down.requests) == FAILURES  # nothing was sent once it opened
    assert all(r.error.code == "callback.paused" for r in held)
    assert all(27 <= r.delay_s <= 33.1 for r in held)  # the open time left, jitter included

    row = _row(db_engine, dead[0])
    assert (row["status"], row["callback_status"], row["callback_attempts"]) == (
        "completed", "retrying", FAILURES)
    deliveries = _events(db_engine, dead[0], "delivery")
    assert [d["code"] for _, d in deliveries] == ["callback.retry"] * FAILURES + [
        "callback.paused"] * 2
    assert [a for a, _ in deliveries] == [1, 2, 3, 3, 3]
    assert {d["reason"] for _, d in deliveries[FAILURES:]} == {"breaker_open"}
    assert deliveries[-1][1]["host"] == f"http://127.0.0.1:{down.port}"
    retrying = _events(db_engine, dead[0], "retrying")[-1][1]
    assert retrying["code"] == "callback.paused" and 27 <= retrying["delay_s"] <= 33.1
    other = _row(db_engine, dead[1])
    assert (other["callback_status"], other["callback_attempts"]) == ("retrying", 0)

    assert served.outcome is StageOutcome.CONTINUE and len(up.requests) == 1
    assert _row(db_engine, live)["callback_status"] == "delivered"


def test_a_held_back_callback_still_ends_at_its_max_age(
        hook_settings: Settings, db_engine: Engine, unique: str) -> None:
    settings = hook_settings
    aged = settings.model_copy(update={"webhook_max_age_s": 1})
    with CallbackReceiver(SECRET, [Reply(500)] * 100) as down:
        task_id = _task(db_engine, f"cb-age-{unique}", down.url("/hook"))
        for _ in range(FAILURES):
            _run(settings, db_engine, task_id)
        assert _run(aged, db_engine, task_id).error.code == "callback.paused"
        time.sleep(1.1)
        result = _run(aged, db_engine, task_id)
    assert result.outcome is StageOutcome.CONTINUE and len(down.requests) == FAILURES
    row = _row(db_engine, task_id)
    assert (row["status"], row["callback_status"], row["callback_attempts"]) == (
        "completed", "failed", FAILURES)


def test_rate_limited_callbacks_are_delayed_then_all_delivered_once(
        hook_settings: Settings, db_engine: Engine, unique: str) -> None:
    settings = hook_settings
    limited = settings.model_copy(update={"webhook_rate": "2/second"})
    with CallbackReceiver(SECRET) as receiver:
        tasks = [_task(db_engine, f"cb-rate-{unique}-{i}", receiver.url("/hook"))
                 for i in range(6)]
        pending, rounds, reasons = list(tasks), 0, set()
        while pending and rounds < 20:
            rounds += 1
            results = {t: _run(limited, db_engine, t) for t in pending}
            held = {t: r for t, r in results.items() if r.outcome is StageOutcome.RETRY}
            assert len(results) - len(held) <= 2  # at most two per second go out
            reasons |= {r.error.detail["reason"] for r in held.values()}
            assert all(0 < r.delay_s <= 2.01 for r in held.values())
            pending = list(held)
            if pending:
                time.sleep(min(r.delay_s for r in held.values()))
    assert pending == [] and reasons == {"rate_limited"}
    assert sorted(r.payload["task_id"] for r in receiver.requests) == sorted(tasks)
    rows = [_row(db_engine, t) for t in tasks]
    assert {(r["callback_status"], r["callback_attempts"]) for r in rows} == {("delivered", 1)}
