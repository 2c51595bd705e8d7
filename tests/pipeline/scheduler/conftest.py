"""Scheduler tests against the real PostgreSQL: jobs admitted the way the bridge admits
them (one insert, then :func:`pipeline.scheduler.settle.settle` in the same transaction)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.scheduler.settle import settle


class Jobs:
    def __init__(self, db_engine: Engine, topic: str) -> None:
        self.db, self.topic = db_engine, topic

    def admit(self, *jobs: dict[str, Any]) -> dict[str, list[str]]:
        """Insert ``jobs`` (task_id plus any tasks column) in order, then settle them."""
        with self.db.begin() as conn:
            for job in jobs:
                values = {"kafka_topic": self.topic, **job}
                if "depends_on" in values:
                    values["depends_on"] = list(values["depends_on"])
                names = ", ".join(values)
                marks = ", ".join(f":{k}" for k in values)
                conn.execute(text(f"INSERT INTO tasks ({names}) VALUES ({marks})"), values)
            cur = conn.connection.driver_connection.cursor()
            return settle(cur, [job["task_id"] for job in jobs])

    def status(self, task_id: str) -> str:
        return self.row(task_id)["status"]

    def row(self, task_id: str) -> dict[str, Any]:
        with self.db.connect() as conn:
            return dict(conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                     {"t": task_id}).mappings().one())

    def finish(self, task_id: str, status: str = "completed", code: str | None = None) -> None:
        with self.db.begin() as conn:
            conn.execute(text("UPDATE tasks SET status = :s, error_code = :c, "
                              "finished_at = now() WHERE task_id = :t"),
                         {"s": status, "c": code, "t": task_id})

    def statuses(self, prefix: str = "") -> dict[str, str]:
        with self.db.connect() as conn:
            return {r.task_id: r.status for r in conn.execute(text(
                "SELECT task_id, status FROM tasks WHERE kafka_topic = :topic "
                "AND task_id LIKE :p"), {"topic": self.topic, "p": f"{prefix}%"})}

    def counts(self) -> dict[str, tuple[int, int, int]]:
        """The trigger-kept tenant counts (runnable, waiting, in flight)."""
        with self.db.connect() as conn:
            return {r.tenant: (r.runnable, r.waiting, r.inflight) for r in conn.execute(text(
                "SELECT * FROM tenants WHERE topic = :topic"), {"topic": self.topic})}

    def true_counts(self) -> dict[str, tuple[int, int, int]]:
        with self.db.connect() as conn:
            rows = conn.execute(text("""
                SELECT coalesce(tenant, '') AS tenant,
                       count(*) FILTER (WHERE status = 'received') AS r,
                       count(*) FILTER (WHERE status = 'waiting') AS w,
                       count(*) FILTER (WHERE status IN ('queued', 'running')) AS i
                FROM tasks WHERE kafka_topic = :topic GROUP BY 1"""), {"topic": self.topic})
            return {r.tenant: (r.r, r.w, r.i) for r in rows}


@pytest.fixture
def jobs(db_engine: Engine, unique: str) -> Iterator[Jobs]:
    topic = f"test-sched-{unique}"
    yield Jobs(db_engine, topic)
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM task_dependencies WHERE task_id IN "
                          "(SELECT task_id FROM tasks WHERE kafka_topic = :t)"), {"t": topic})
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
        conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})


def as_json(value: Any) -> str:
    return json.dumps(value)
