"""The callback of a job that never ran, on the real PostgreSQL, Redis and a real receiver:
cancelled in the backlog or in the Redis window, expired, failed by its dependency, refused
at the door, cancelled before its message came. Each gets its callback, and keeps
``started_at`` NULL and its stage: no status event, status answer or timing shows it as
started. A job that did run keeps the ``started_at`` of its first stage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from pipeline.console.status import describe
from pipeline.scheduler import cancel as cancelling
from pipeline.scheduler import upkeep
from pipeline.scheduler.settle import settle
from pipeline.settings import Settings
from pipeline.stages import callback
from pipeline.stages.runner import StageOutcome, run_stage
from pipeline.state.admission import TASK_COLUMNS, RejectRow, admit
from pipeline.webhooks.flow import PREFIX
from tests.pipeline.webhooks.test_flow_redis import FLOW_REDIS_DB, SECRET, flow_settings
from tests.support.receiver import CallbackReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
def hook_settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    yield flow_settings(work_dir=tmp_path, heartbeat_interval_s=1)
    client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=FLOW_REDIS_DB)
    for key in client.scan_iter(f"{PREFIX}*"):
        client.delete(key)


@pytest.fixture
def topic(db_engine: Engine, unique: str) -> Iterator[str]:
    name = f"test-neverrun-{unique}"
    yield name
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM task_dependencies WHERE task_id IN "
                          "(SELECT task_id FROM tasks WHERE kafka_topic = :t)"), {"t": name})
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": name})
        conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": name})


def _row_values(task_id: str, topic: str, offset: int, url: str | None,
                depends_on: list[str] | None = None) -> tuple[Any, ...]:
    values = {"task_id": task_id, "kafka_topic": topic, "kafka_partition": 0,
              "kafka_offset": offset, "priority": 5, "depends_on": depends_on or [],
              "payload": json.dumps({"task_id": task_id}), "config": "{}",
              "callback_url": url}
    return tuple(values.get(column) for column in TASK_COLUMNS)


def _admit(db_engine: Engine, rows: list[tuple[Any, ...]],
           rejects: list[RejectRow] | None = None) -> None:
    """Admit the way the bridge does: one transaction, then settle the new jobs."""
    raw = db_engine.raw_connection()
    try:
        cur = raw.cursor()
        done = admit(cur, rows, rejects or [])
        settle(cur, done.to_settle)
        raw.commit()
    finally:
        raw.close()


def _row(db_engine: Engine, task_id: str) -> dict[str, Any]:
    with db_engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                 {"t": task_id}).mappings().one())


def _started_in_events(db_engine: Engine, task_id: str) -> list[Any]:
    with db_engine.connect() as conn:
        return [r[0] for r in conn.execute(text(
            "SELECT body->'timings'->>'started_at' FROM status_outbox WHERE task_id = :t "
            "ORDER BY id"), {"t": task_id})]


def test_a_job_that_never_ran_keeps_started_at_null_through_its_callback(
        hook_settings: Settings, db_engine: Engine, topic: str) -> None:
    with CallbackReceiver(SECRET) as receiver:
        url = receiver.url("/hook")
        ids = {name: f"{topic}.{name}" for name in (
            "backlog", "window", "expired", "dep", "dependent", "refused", "early", "ran")}
        _admit(db_engine, [
            _row_values(ids["backlog"], topic, 0, url),
            _row_values(ids["window"], topic, 1, url),
            _row_values(ids["expired"], topic, 2, url),
            _row_values(ids["dep"], topic, 3, url),
            _row_values(ids["dependent"], topic, 4, url, depends_on=[ids["dep"]]),
            _row_values(ids["ran"], topic, 5, url),
        ], [RejectRow(ids["refused"], topic, 0, 6, None, "message.missing_field",
                      "no audio_url", url)])
        assert cancelling.cancel_ahead(db_engine, topic, [ids["early"]], "early") == {
            ids["early"]: "cancelled_before_admission"}
        _admit(db_engine, [_row_values(ids["early"], topic, 7, url)])
        with db_engine.begin() as conn:
            # In the Redis window (the dispatcher's update), not started by a worker.
            conn.execute(text("UPDATE tasks SET status = 'queued', stage = 'preprocess', "
                              "queued_at = now() WHERE task_id = :t"), {"t": ids["window"]})
            # A job that did run: its first stage set started_at.
            conn.execute(text("UPDATE tasks SET status = 'failed', stage = 'gpu', "
                              "started_at = now() - interval '1 minute', finished_at = now(), "
                              "error_code = 'engine.failed' WHERE task_id = :t"),
                         {"t": ids["ran"]})
            conn.execute(text("UPDATE tasks SET deadline = now() - interval '1 second' "
                              "WHERE task_id = :t"), {"t": ids["expired"]})
            assert upkeep.expire(conn, topic) == [ids["expired"]]
        assert cancelling.cancel(db_engine, [ids["backlog"], ids["window"], ids["dep"]]) == {
            ids["backlog"]: "cancelled", ids["window"]: "cancelled", ids["dep"]: "cancelled"}
        assert _row(db_engine, ids["dependent"])["error_code"] == "dependency.failed"
        with db_engine.begin() as conn:
            owed = dict(upkeep.owed_callbacks(conn, topic))
        never = [t for name, t in ids.items() if name != "ran"]
        assert sorted(owed) == sorted(never)
        before = {t: _row(db_engine, t) for t in ids.values()}

        for task_id in ids.values():
            result = run_stage(hook_settings, db_engine, task_id, "callback", callback.run,
                               max_attempts=1_000_000)
            assert result.outcome is StageOutcome.CONTINUE, (task_id, result)
        statuses = {r.payload["task_id"]: r.payload["status"] for r in receiver.requests}

    assert statuses == {t: before[t]["status"] for t in ids.values()}
    for task_id in never:
        row = _row(db_engine, task_id)
        assert row["callback_status"] == "delivered", task_id
        assert row["started_at"] is None, task_id
        assert (row["status"], row["stage"]) == (before[task_id]["status"],
                                                 before[task_id]["stage"]), task_id
        assert set(_started_in_events(db_engine, task_id)) == {None}, task_id
        with db_engine.connect() as conn:
            told = describe(conn, task_id)
        assert told["started_at"] is None and told["timings"]["wait_s"] is None, task_id
    ran = _row(db_engine, ids["ran"])
    assert ran["callback_status"] == "delivered"
    assert ran["started_at"] == before[ids["ran"]]["started_at"]
    with db_engine.connect() as conn:
        assert describe(conn, ids["ran"])["timings"]["wait_s"] is not None


def test_migration_0011_clears_the_start_a_callback_gave_a_job_that_never_ran(
        db_engine: Engine, topic: str) -> None:
    """Rows as the callback left them before (started after the job had finished) lose
    that start; jobs that ran, or never got a callback, keep theirs."""
    import importlib.util

    path = (Path(__file__).resolve().parents[3] / "migrations" / "versions"
            / "0011_ordering_key_per_topic.py")
    spec = importlib.util.spec_from_file_location("migration_0011", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    rows = {  # name: (status, started_at, finished_at) as SQL, and started_at kept?
        "cancelled": ("cancelled", "now() - interval '1 minute'",
                      "now() - interval '2 minutes'", False),
        "expired": ("expired", "now()", "now() - interval '1 second'", False),
        "refused": ("rejected", "now() - interval '1 hour'", "now() - interval '2 hours'", False),
        "ran": ("failed", "now() - interval '2 minutes'", "now() - interval '1 minute'", True),
        "done": ("completed", "now() - interval '1 hour'", "now()", True),
        "moving": ("running", "now() - interval '1 minute'", "NULL", True),
    }
    with db_engine.begin() as conn:
        for name, (status, started, finished, _) in rows.items():
            conn.execute(text(f"INSERT INTO tasks (task_id, kafka_topic, status, started_at, "
                              f"finished_at) VALUES (:t, :topic, :s, {started}, {finished})"),
                         {"t": f"{topic}.{name}", "topic": topic, "s": status})
        conn.execute(text(migration.REPAIR_STARTED))
    for name, (*_, kept) in rows.items():
        assert (_row(db_engine, f"{topic}.{name}")["started_at"] is not None) is kept, name
