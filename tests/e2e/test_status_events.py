"""Status events of real runs on the real stack, with Kafka stopped in the middle: the
stages go on, the events wait in the outbox, and once Kafka is back every event arrives,
in order per task. The relay runs as the bridge runs it (a thread), against a Kafka of its
own, so stopping it touches no other test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer
from prometheus_client import REGISTRY
from sqlalchemy import text

from pipeline.settings import STAGES, Settings
from pipeline.status.cache import StatusCache
from pipeline.status.events import SCHEMA_VERSION
from pipeline.status.relay import Relay
from pipeline.status.sink import KafkaSink, producer_factory
from tests.e2e.conftest import Stack
from tests.support import pools
from tests.support.kafka_broker import PrivateKafka

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = {"schema_version", "id", "seq", "task_id", "event", "status", "stage", "progress",
        "attempt", "at", "error", "timings", "video_url", "tenant", "detail"}


@pytest.fixture
def status_db(stack: Settings) -> Iterator[int]:
    """A Redis database of its own for the status cache (no pool consumes from it)."""
    with pools.lease("test_status_events", stack) as lease:
        yield lease.redis_db


@pytest.fixture
def private_kafka(stack: Settings, tmp_path: Path) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(stack, tmp_path / "kafka-state")
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def _pending(stack: Stack, ids: list[str]) -> int:
    with stack.db_engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM status_outbox WHERE task_id = ANY(:ids) "
            "AND published_at IS NULL"), {"ids": ids}).scalar_one())


def _outbox(stack: Stack, task_id: str) -> list[tuple[int, str]]:
    with stack.db_engine.connect() as conn:
        return [(r.seq, r.event) for r in conn.execute(text(
            "SELECT seq, event FROM status_outbox WHERE task_id = :t ORDER BY id"),
            {"t": task_id})]


def _consume(settings: Settings, topic: str, ids: set[str], want: int
             ) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", enable_auto_commit=False,
                             **settings.kafka_client_config())
    out: list[dict[str, Any]] = []
    end = time.monotonic() + 30
    try:
        while len(out) < want and time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    value = json.loads(record.value)
                    assert record.key.decode() == value["task_id"]
                    if value["task_id"] in ids:
                        out.append(value)
    finally:
        consumer.close()
    return out


def _failures(topic: str) -> float:
    return REGISTRY.get_sample_value("sonic_status_publish_failures_total",
                                     {"topic": topic}) or 0.0


def _wait(what: str, check: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not seen in {timeout} s")
        time.sleep(0.1)


def test_kafka_stopped_mid_run_stages_complete_and_every_event_arrives_in_order(
        stack_e2e: Stack, private_kafka: PrivateKafka, status_db: int, unique: str) -> None:
    stack = stack_e2e
    settings = private_kafka.settings
    sink = KafkaSink(producer_factory(settings, bootstrap_ms=2000, request_ms=2000,
                                      delivery_ms=4000, block_ms=2000),
                     settings.topic_status, flush_timeout_s=6)
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port,
                         db=status_db)
    relay = Relay(stack.db_engine, stack.topic, sink.publish, StatusCache(client, 600),
                  idle_s=0.1, backoff_max_s=2.0, prune_s=3600)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    failures_before = _failures(stack.topic)
    ids = [stack.submit(f"status-{i}-{unique}") for i in range(2)]
    try:
        # Given a run whose events reach Kafka live ...
        _wait("events published live", lambda: all(
            (client.get(f"sonic:status:{t}") or b"") for t in ids), 30)
        # ... when Kafka dies in the middle of it (two more jobs, killed once one of them
        # runs: a job takes a few seconds here, the first two may be done already),
        ids += [stack.submit(f"status-{i}-{unique}") for i in range(2, 4)]
        _wait("a job of the second pair running", lambda: any(
            stack.row(t)["status"] == "running" for t in ids[2:]), 30)
        private_kafka.kill()
        down_at = time.monotonic()
        rows, most = {}, 0
        for task_id in ids:  # the stages go on
            rows[task_id] = stack.wait_final(task_id, timeout=180)
            most = max(most, _pending(stack, ids))
        time.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))  # a few failed passes
        outage_s = time.monotonic() - down_at
        assert {t: (r["status"], r["callback_status"]) for t, r in rows.items()} == {
            t: ("completed", "delivered") for t in ids}
        # The relay tried meanwhile (a pass ends after the producer's delivery timeout; one
        # begun before the kill may still mark what Kafka acked before it died) ...
        _wait("a relay pass refused by the dead Kafka",
              lambda: _failures(stack.topic) > failures_before, 20)
        refused = _failures(stack.topic)
        waiting = _pending(stack, ids)
        assert waiting > 0, "events were published with Kafka down"
        # ... and a whole pass begun with Kafka dead keeps every event.
        _wait("a second relay pass refused by the dead Kafka",
              lambda: _failures(stack.topic) > refused, 30)
        assert _pending(stack, ids) >= waiting
        # then, once it is back, every event arrives, in order per task.
        private_kafka.start()
        back_at = time.monotonic()
        _wait("the outbox drained", lambda: _pending(stack, ids) == 0, 60)
        drained_s = time.monotonic() - back_at
    finally:
        stop.set()
        thread.join(30)
        sink.close()
    told = {t: _outbox(stack, t) for t in ids}
    want = sum(len(v) for v in told.values())
    records = _consume(settings, settings.topic_status, set(ids), want)
    print(f"\nstatus events: {want} for {len(ids)} jobs; Kafka down {outage_s:.1f} s, "
          f"{max(most, waiting)} waiting in the outbox; drained {drained_s:.1f} s after it "
          f"came back; {len(records) - want} duplicates")
    for task_id in ids:
        arrived = [r["seq"] for r in records if r["task_id"] == task_id]
        assert arrived == sorted(arrived), f"{task_id} reordered: {arrived}"
        assert sorted(set(arrived)) == [seq for seq, _ in told[task_id]]
        assert list(range(1, len(told[task_id]) + 1)) == sorted(set(arrived))
        names = [e for _, e in told[task_id]]
        assert names[:2] == ["admitted", "running"] and "completed" in names
        assert [r["stage"] for r in records if r["task_id"] == task_id and
                r["event"] == "stage_succeeded"][-5:] == list(STAGES)
        for record in records:
            assert set(record) == KEYS and record["schema_version"] == SCHEMA_VERSION
        latest = json.loads(client.get(f"sonic:status:{task_id}"))
        assert latest["seq"] == len(told[task_id])
    client.close()
