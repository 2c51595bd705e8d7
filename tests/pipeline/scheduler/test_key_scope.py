"""An ordering key orders the jobs of one task topic (README, "The dispatcher"), on the real
PostgreSQL: the same key on two topics holds nothing across them, at admission (settle and
the batch path), in the release trigger, for dependents and in the upkeep; inside one topic
the key still runs its jobs one at a time in admission order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.scheduler import upkeep
from pipeline.state.admission import TASK_COLUMNS, admit, hold
from tests.pipeline.scheduler.conftest import Jobs

pytestmark = pytest.mark.integration

KEYS = ("user-7", "k", "tenant:a/b")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _cleanup(db_engine: Engine, topic: str) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM task_dependencies WHERE task_id IN "
                          "(SELECT task_id FROM tasks WHERE kafka_topic = :t)"), {"t": topic})
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
        conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})


@pytest.fixture
def topics(db_engine: Engine, unique: str) -> Iterator[tuple[Jobs, Jobs]]:
    pair = (Jobs(db_engine, f"test-keyscope-a-{unique}"),
            Jobs(db_engine, f"test-keyscope-b-{unique}"))
    yield pair
    for jobs in pair:
        _cleanup(db_engine, jobs.topic)


def _keyed(jobs: Jobs, n: int, key: str, **extra: Any) -> dict[str, Any]:
    return {"task_id": f"{jobs.topic}-{key}-{n}", "ordering_key": f"{key}", **extra}


def test_the_same_key_on_two_topics_holds_nothing_across_them(
        topics: tuple[Jobs, Jobs]) -> None:
    a, b = topics
    for key in KEYS:
        a.admit(_keyed(a, 1, key))
        b.admit(_keyed(b, 1, key))
        a.admit(_keyed(a, 2, key))
        b.admit(_keyed(b, 2, key))
    for key in KEYS:
        for jobs in (a, b):  # each topic's first job runs; its second waits for it only
            assert jobs.status(f"{jobs.topic}-{key}-1") == "received", key
            assert jobs.status(f"{jobs.topic}-{key}-2") == "waiting", key
    for key in KEYS:
        # b's head ends while a's is still in flight: b's next job is released at once
        # (the trigger), a's stays behind its own head.
        b.finish(f"{b.topic}-{key}-1")
        assert b.status(f"{b.topic}-{key}-2") == "received", key
        assert a.status(f"{a.topic}-{key}-2") == "waiting", key
        a.finish(f"{a.topic}-{key}-1", "failed", "engine.failed")
        assert a.status(f"{a.topic}-{key}-2") == "received", key


def test_a_dependent_is_released_by_its_own_topics_key_only(
        topics: tuple[Jobs, Jobs]) -> None:
    a, b = topics
    for key in KEYS:
        dep = f"{b.topic}-{key}-dep"
        b.admit({"task_id": dep})
        a.admit(_keyed(a, 1, key))  # in flight on topic a, same key
        b.admit(_keyed(b, 1, key, depends_on=[dep]))
        assert b.status(f"{b.topic}-{key}-1") == "waiting"
        b.finish(dep)
        assert b.status(f"{b.topic}-{key}-1") == "received", key  # the trigger, at once
        assert a.status(f"{a.topic}-{key}-1") == "received"


def test_the_upkeep_releases_per_topic(topics: tuple[Jobs, Jobs]) -> None:
    """A job left waiting when no trigger saw its head end (admitted while it was ending;
    here: rows written as they are) is released by the upkeep, per topic."""
    a, b = topics
    with b.db.begin() as conn:
        for key in KEYS:
            conn.execute(text(
                "INSERT INTO tasks (task_id, kafka_topic, ordering_key, status) VALUES "
                "(:a1, :ta, :k, 'received'), (:b1, :tb, :k, 'completed'), "
                "(:b2, :tb, :k, 'waiting')"),
                {"a1": f"{a.topic}-{key}-1", "b1": f"{b.topic}-{key}-1",
                 "b2": f"{b.topic}-{key}-2", "ta": a.topic, "tb": b.topic, "k": key})
    with b.db.begin() as conn:
        released, failed, _ = upkeep.resolve(conn, b.topic, EPOCH, 3600)
    assert sorted(released) == sorted(f"{b.topic}-{key}-2" for key in KEYS)
    assert failed == []


def _row(topic: str, task_id: str, key: str, offset: int) -> tuple[Any, ...]:
    values = {"task_id": task_id, "kafka_topic": topic, "kafka_partition": 0,
              "kafka_offset": offset, "ordering_key": key, "priority": 5, "depends_on": [],
              "payload": json.dumps({"task_id": task_id}), "config": "{}"}
    return tuple(values.get(column) for column in TASK_COLUMNS)


def _admit_batch(db_engine: Engine, rows: list[tuple[Any, ...]]) -> list[str]:
    """The bridge's batch path (admit, then hold); the ids made waiting."""
    raw = db_engine.raw_connection()
    try:
        cur = raw.cursor()
        done = admit(cur, rows)
        waiting = hold(cur, done.to_hold)
        raw.commit()
        return waiting
    finally:
        raw.close()


def test_a_batch_holds_a_key_per_topic(db_engine: Engine, topics: tuple[Jobs, Jobs]) -> None:
    a, b = topics
    first = [_row(jobs.topic, f"{jobs.topic}-{key}-1", key, i)
             for i, key in enumerate(KEYS) for jobs in (a, b)]
    # One batch with both topics' first jobs of each key: none waits for the other topic's.
    assert _admit_batch(db_engine, first) == []
    # Later batches, one per topic: each job waits for its own topic's first job only.
    for jobs in (a, b):
        later = [_row(jobs.topic, f"{jobs.topic}-{key}-2", key, 10 + i)
                 for i, key in enumerate(KEYS)]
        assert sorted(_admit_batch(db_engine, later)) == sorted(r[0] for r in later)
    for key in KEYS:
        a.finish(f"{a.topic}-{key}-1")
        assert a.status(f"{a.topic}-{key}-2") == "received"
        assert b.status(f"{b.topic}-{key}-2") == "waiting"
    # Inside one batch of one topic, the key still orders: the second job waits.
    more = [_row(a.topic, f"{a.topic}-{key}-{n}", key, 20 + 2 * i + n)
            for i, key in enumerate(KEYS) for n in (3, 4)]
    assert sorted(_admit_batch(db_engine, more)) == sorted(r[0] for r in more)
