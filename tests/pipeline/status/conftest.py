"""Status-event tests against the real PostgreSQL, Redis and Kafka: jobs admitted and run
through the same state functions the bridge, the dispatcher and the stages use."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer
from sqlalchemy import Engine, text

from pipeline.scheduler.settle import settle
from pipeline.settings import Settings
from pipeline.state.admission import TASK_COLUMNS, RejectRow, admit

#: Redis database of these tests (the e2e workers use 11).
STATUS_REDIS_DB = 13


class Jobs:
    """Admit jobs of one topic the way the bridge does, and read their outbox rows."""

    def __init__(self, db_engine: Engine, topic: str) -> None:
        self.db, self.topic = db_engine, topic

    def admit(self, *task_ids: str, rejects: tuple[tuple[str, str], ...] = (),
              **columns: Any) -> dict[str, list[str]]:
        """Admit ``task_ids`` in one batch (plus ``rejects``: (task id, code)), settled."""
        rows = [self._row(i, t, **columns) for i, t in enumerate(task_ids)]
        refused = [RejectRow(t, self.topic, 0, 1000 + i, None, code, f"bad: {code}")
                   for i, (t, code) in enumerate(rejects)]
        raw = self.db.raw_connection()
        try:
            cur = raw.cursor()
            admitted = admit(cur, rows, refused)
            settled = settle(cur, admitted.new)
            raw.commit()
        finally:
            raw.close()
        return {"new": admitted.new, **settled}

    def _row(self, offset: int, task_id: str, *, ordering_key: str | None = None,
             depends_on: list[str] | None = None, tenant: str | None = None,
             deadline: Any = None) -> tuple[Any, ...]:
        payload = {"task_id": task_id, "image_url": "/uploads/a.jpg", "audio_url": "/uploads/a.wav"}
        values = {"task_id": task_id, "kafka_topic": self.topic, "kafka_partition": 0,
                  "kafka_offset": offset, "ordering_key": ordering_key, "tenant": tenant,
                  "priority": 5, "depends_on": depends_on, "deadline": deadline,
                  "payload": json.dumps(payload), "config": "{}"}
        return tuple(values.get(column) for column in TASK_COLUMNS)

    def outbox(self, task_id: str) -> list[dict[str, Any]]:
        with self.db.connect() as conn:
            return [dict(r) for r in conn.execute(text(
                "SELECT id, seq, event, topic, body, published_at FROM status_outbox "
                "WHERE task_id = :t ORDER BY id"), {"t": task_id}).mappings()]

    def names(self, task_id: str) -> list[str]:
        return [r["event"] for r in self.outbox(task_id)]

    def pending(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM status_outbox WHERE topic = :t AND published_at IS NULL"),
                {"t": self.topic}).scalar_one())


@pytest.fixture
def jobs(db_engine: Engine, unique: str) -> Jobs:
    return Jobs(db_engine, f"status-{unique}")


@pytest.fixture
def status_redis(stack: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=STATUS_REDIS_DB,
                         socket_timeout=5)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def consume(settings: Settings, topic: str, want: int, timeout_s: float = 30.0
            ) -> list[tuple[str, dict[str, Any], dict[str, bytes]]]:
    """Read ``topic`` from its start until ``want`` records came (or the timeout):
    (key, value, headers) in the order of each partition."""
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=1000, **settings.kafka_client_config())
    out: list[tuple[str, dict[str, Any], dict[str, bytes]]] = []
    end = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=500).values():
                out += [(r.key.decode(), json.loads(r.value), dict(r.headers)) for r in batch]
    finally:
        consumer.close()
    return out


def per_task(records: list[tuple[str, dict[str, Any], dict[str, bytes]]]
             ) -> dict[str, list[int]]:
    """Each task's seqs in the order they arrived."""
    seqs: dict[str, list[int]] = {}
    for key, value, _ in records:
        assert key == value["task_id"]
        seqs.setdefault(key, []).append(value["seq"])
    return seqs
