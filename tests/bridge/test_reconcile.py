"""The reconciler against the real Postgres: stuck jobs and expired leases, one sweeper."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from pipeline import reconcile

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(db_engine: Engine, unique: str) -> Iterator[str]:
    name = f"test-reconcile-{unique}"
    yield name
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": name})


def insert(db_engine: Engine, topic: str, task_id: str, **columns: object) -> None:
    values = {"task_id": task_id, "kafka_topic": topic, "priority": 4, **columns}
    names = ", ".join(values)
    params = ", ".join(f":{k}" if not str(v).startswith("now()") else str(v)
                       for k, v in values.items())
    with db_engine.begin() as conn:
        conn.execute(text(f"INSERT INTO tasks ({names}) VALUES ({params})"),
                     {k: v for k, v in values.items() if not str(v).startswith("now()")})


def row(db_engine: Engine, task_id: str) -> dict[str, object]:
    with db_engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                 {"t": task_id}).mappings().one())


def test_expired_leases_are_requeued_and_exhausted_ones_fail(db_engine: Engine,
                                                              topic: str) -> None:
    expired = "now() - interval '1 minute'"
    live = "now() + interval '1 minute'"
    insert(db_engine, topic, f"{topic}-dead", status="running", stage="gpu", lease_stage="gpu",
           lease_owner="w1", lease_expires_at=expired, attempts=1)
    insert(db_engine, topic, f"{topic}-done-for", status="running", stage="encode",
           lease_stage="encode", lease_owner="w2", lease_expires_at=expired, attempts=3)
    insert(db_engine, topic, f"{topic}-alive", status="running", stage="gpu", lease_stage="gpu",
           lease_owner="w3", lease_expires_at=live, attempts=1)
    sent: list[tuple[str, int, str]] = []
    out = reconcile.sweep(db_engine, topic=topic, max_attempts=3,
                          dispatch=lambda *a: sent.append(a))
    assert sorted(sent) == [(f"{topic}-dead", 4, "gpu"), (f"{topic}-done-for", 4, "callback")]
    assert out.requeued == [(f"{topic}-dead", "gpu")] and out.lost == [f"{topic}-done-for"]
    dead = row(db_engine, f"{topic}-dead")
    assert dead["lease_owner"] is None and dead["status"] == "running" and dead["stage"] == "gpu"
    lost = row(db_engine, f"{topic}-done-for")
    assert (lost["status"], lost["error_code"]) == ("failed", "task.lost")
    assert row(db_engine, f"{topic}-alive")["lease_owner"] == "w3"  # a live copy: untouched
    with db_engine.connect() as conn:
        events = conn.execute(text(
            "SELECT task_id, event FROM task_events WHERE task_id LIKE :p ORDER BY id"),
            {"p": f"{topic}-%"}).all()
    assert sorted(events) == [(f"{topic}-dead", "requeued"), (f"{topic}-done-for", "failed")]
    # A second sweep finds nothing: the claim was atomic.
    again = reconcile.sweep(db_engine, topic=topic, max_attempts=3,
                            dispatch=lambda *a: sent.append(a))
    assert not (again.requeued or again.lost) and len(sent) == 2


def test_one_bridge_sweeps_at_a_time(db_engine: Engine, topic: str) -> None:
    with db_engine.begin() as conn:
        assert conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                            {"k": f"sonic-reconcile:{topic}"}).scalar()
        out = reconcile.sweep(db_engine, topic=topic, max_attempts=3,
                              dispatch=lambda *a: None)
    assert out.locked is False
