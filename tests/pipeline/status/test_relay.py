"""The relay on the real PostgreSQL and Kafka: in order per task, one active per topic,
nothing lost or reordered when Kafka refuses, and its throughput."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import redis
from sqlalchemy import Engine

from pipeline.scheduler import cancel
from pipeline.settings import Settings
from pipeline.state import journal
from pipeline.status import relay as relay_module
from pipeline.status.cache import StatusCache
from pipeline.status.events import StatusEvent
from pipeline.status.relay import Relay, publish_in_order, waves
from pipeline.status.sink import KafkaSink, producer_factory
from tests.pipeline.status.conftest import Jobs, consume, per_task
from tests.support.server import free_port

pytestmark = pytest.mark.integration


def _event(task: str, seq: int) -> StatusEvent:
    return {"id": seq * 10 + ord(task), "task_id": task, "seq": seq}


def test_waves_hold_each_tasks_next_event_until_the_one_before_is_acknowledged() -> None:
    events = [_event("a", 1), _event("b", 1), _event("a", 2), _event("a", 3), _event("b", 2),
              _event("c", 1)]
    assert [[f"{e['task_id']}{e['seq']}" for e in wave] for wave in waves(events)] == [
        ["a1", "b1", "c1"], ["a2", "b2"], ["a3"]]
    sent: list[list[str]] = []

    def refuse_b2(wave: Sequence[StatusEvent]) -> list[bool]:
        sent.append([f"{e['task_id']}{e['seq']}" for e in wave])
        return [f"{e['task_id']}{e['seq']}" != "b2" for e in wave]

    ids = publish_in_order(refuse_b2, events)
    assert sent == [["a1", "b1", "c1"], ["a2", "b2"]]  # a refusal ends the pass
    assert sorted(ids) == sorted(e["id"] for e in events if e["seq"] == 1 or
                                 (e["task_id"], e["seq"]) == ("a", 2))


class Flaky:
    """A Kafka stand-in that refuses the events of chosen passes (a broker down, a
    partition leader moving), and records what it accepted."""

    def __init__(self, refuse: Sequence[Sequence[bool]] = ()) -> None:
        self.refuse = list(refuse)
        self.accepted: list[StatusEvent] = []

    def publish(self, events: Sequence[StatusEvent]) -> list[bool]:
        plan = list(self.refuse.pop(0)) if self.refuse else []
        done = [not (plan[i] if i < len(plan) else False) for i in range(len(events))]
        self.accepted += [e for e, ok in zip(events, done) if ok]
        return done


def test_refused_events_are_sent_again_after_the_earlier_ones_never_before(
        jobs: Jobs, db_engine: Engine, unique: str) -> None:
    tasks = [f"flaky-{i}-{unique}" for i in range(3)]
    jobs.admit(*tasks)
    cancel.cancel(db_engine, tasks[:2])
    # Pending in id order: admitted 0, 1, 2, cancelled 0, 1. Kafka refuses admitted 0 in
    # the first call, then cancelled 1 in the second.
    sink = Flaky([[True, False, False], [False, True]])
    relay = Relay(db_engine, jobs.topic, sink.publish, batch=100, prune_s=3600)
    assert relay.once() == (2, 3)  # task 0 waits; nobody's second event leaves
    assert relay.once() == (1, 2)  # task 0's admitted goes; task 1's cancelled is refused
    assert relay.once() == (2, 0)
    assert jobs.pending() == 0
    seqs: dict[str, list[int]] = {}
    for event in sink.accepted:
        seqs.setdefault(event["task_id"], []).append(event["seq"])
    assert seqs == {tasks[0]: [1, 2], tasks[1]: [1, 2], tasks[2]: [1]}


def test_kafka_unreachable_events_wait_and_stages_go_on_then_all_arrive_in_order(
        jobs: Jobs, db_engine: Engine, stack: Settings, unique: str) -> None:
    tasks = [f"outage-{i}-{unique}" for i in range(4)]
    jobs.admit(*tasks)
    topic = f"sonic-status-test-{unique}"
    down = stack.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    dead = KafkaSink(producer_factory(down, bootstrap_ms=300), topic)
    relay = Relay(db_engine, jobs.topic, dead.publish, batch=100, prune_s=3600)
    assert relay.once() == (0, 4)
    for task in tasks:  # the writers never notice
        journal.record(db_engine, task, "preprocess", "started")
        journal.record(db_engine, task, "preprocess", "succeeded", duration_s=0.1)
    assert jobs.pending() == 12

    live = KafkaSink(producer_factory(stack), topic)
    try:
        relay.publish = live.publish
        assert relay.drain() == 12
    finally:
        live.close()
    records = consume(stack, topic, 12)
    assert per_task(records) == {t: [1, 2, 3] for t in tasks}
    assert all(h == {"sonic-schema": b"1"} for _, _, h in records)
    assert [v["event"] for _, v, _ in records if v["task_id"] == tasks[0]] == [
        "admitted", "stage_started", "stage_succeeded"]


def test_one_relay_per_topic_is_active(jobs: Jobs, db_engine: Engine) -> None:
    first, second = Flaky(), Flaky()
    relays = [Relay(db_engine, jobs.topic, s.publish, idle_s=0.05) for s in (first, second)]
    stop = threading.Event()
    threads = [threading.Thread(target=r.run, args=(stop,)) for r in relays]
    threads[0].start()
    deadline = time.monotonic() + 5
    while not relays[0].active and time.monotonic() < deadline:
        time.sleep(0.02)
    threads[1].start()
    jobs.admit(*[f"lock-{i}-{jobs.topic}" for i in range(5)])
    deadline = time.monotonic() + 10
    while jobs.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert [r.active for r in relays] == [True, False]
        assert len(first.accepted) == 5 and second.accepted == []
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def test_relay_throughput_and_cache(jobs: Jobs, db_engine: Engine, stack: Settings,
                                    status_redis: redis.Redis, unique: str) -> None:
    """Publishes thousands of events a second to the real Kafka (printed: the figure)."""
    tasks = [f"bulk-{i}-{unique}" for i in range(1500)]
    for start in range(0, len(tasks), 500):
        jobs.admit(*tasks[start:start + 500])
    cancel.cancel(db_engine, tasks)
    topic = f"sonic-status-test-{unique}"
    settings = stack.model_copy(update={"topic_status": topic, "status_relay_batch": 1000})
    relay, sink = relay_module.build(settings, db_engine, status_redis, jobs.topic,
                                     prune_s=3600)
    try:
        sink.publish([])  # nothing: the producer is built on the first real batch
        started = time.perf_counter()
        published = relay.drain(timeout_s=60)
        elapsed = time.perf_counter() - started
    finally:
        sink.close()
    assert published == 3000
    print(f"\nstatus relay: {published} events in {elapsed:.2f} s = "
          f"{published / elapsed:.0f} events/s")
    records = consume(stack, topic, 3000)
    assert per_task(records) == {t: [1, 2] for t in tasks}
    cache = StatusCache(status_redis, 60)
    assert cache.get(tasks[7])["event"] == "cancelled"
    assert 0 < status_redis.ttl(f"sonic:status:{tasks[7]}") <= settings.status_cache_ttl_s
