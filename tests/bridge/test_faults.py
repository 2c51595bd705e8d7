"""Fault and load tests: kill -9 mid-admission, a full window, a member of the group lost."""

from __future__ import annotations

import random
import signal
import threading
import time
import urllib.request

import pytest
from kafka import KafkaConsumer
from sqlalchemy import text

from tests.bridge.conftest import Case
from tests.support.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("total", [
    4000,
    # The first figure, twice the jobs and the time: `make chaos` runs it, not `make test`
    # (the chaos suite's kill-bridge-admission scenario kills a bridge in CI too).
    pytest.param(8000, id="8000", marks=pytest.mark.chaos),
])
def test_kill_9_mid_admission_admits_every_job_exactly_once(make_case, total: int) -> None:
    case: Case = make_case(partitions=8)
    ids = [f"{case.prefix}-{i:05d}" for i in range(total)]
    case.produce(case.jobs(ids))
    rng = random.Random()
    # Static membership: a restarted bridge takes its place in the group at once. Small
    # batches, so that a kill lands mid-admission again and again.
    overrides = (f"kafka_group_instance_id={case.prefix}", "reconcile_interval_s=1",
                 "bridge_batch_max=200")
    kills = 0
    while kills < 6 and case.count() < total * 0.8:
        threshold = case.count() + rng.randint(1, total // 20)
        bridge = case.bridge("bridge", *overrides)
        case.wait(lambda: case.count() >= threshold or bridge.poll() is not None, 90,
                 f"admission past {threshold}", interval_s=0.01)
        time.sleep(rng.uniform(0, 0.05))
        bridge.kill()  # SIGKILL: no cleanup, no commit, no leaving the group
        bridge.wait()
        kills += 1
    assert kills >= 5, "admission outran the kills: every kill must land mid-admission"

    bridge = case.bridge("bridge", *overrides)
    # Everything admitted once, and dispatched: what a kill left runnable goes out with
    # the next bridge's dispatcher.
    case.wait(lambda: case.count("queued") == total and case.lag() == 0, 120,
             "every job admitted and queued")
    assert case.stop(bridge) == 0
    assert case.count() == total
    assert sum(case.events("admitted").values()) == total  # admitted exactly once each
    chains = case.chains()
    assert set(chains) == set(ids)  # none lost
    # A kill between a pick's publish and its commit sends that job's chain again (at
    # least once; the stage lease lets one copy run): at most one extra per kill.
    assert sum(n - 1 for n in chains.values()) <= kills


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_backpressure_keeps_the_backlog_in_kafka_then_drains(make_case) -> None:
    port = free_port()
    case: Case = make_case(partitions=8, backlog_max=500, backlog_low=400, gpu_slots=100,
                           dispatch_lead=1, metrics_port=port)
    total = 5_000
    window = 100
    case.produce(case.jobs([f"{case.prefix}-{i:06d}" for i in range(total)]))

    # Given no workers: the dispatcher fills its window, the backlog fills up to its cap
    # in Postgres, and the bridge pauses.
    bridge = case.bridge()
    case.wait(lambda: case.count() >= 500 and case.count("queued") == window, 60,
             "the window and the backlog to fill")
    time.sleep(6)  # a few backlog recounts and one lag update later
    assert case.count() <= 500 + 1000  # at most one batch past the cap
    assert case.count("queued") == window
    assert case.preprocess_depth() <= window  # Redis holds at most the window
    assert case.lag() == total - case.count()  # the rest waits in Kafka, as lag
    assert _metric(port, "sonic_kafka_consumer_lag") >= total - 2000
    assert _metric(port, "sonic_bridge_backlog") >= 400

    # When a worker drains the queue, the bridge resumes and everything flows through.
    started = time.monotonic()
    worker = case.worker(mode="complete", pool="prefork", concurrency=3)
    peak = [0]

    def watch() -> None:
        while worker.poll() is None and case.count("completed") < total:
            peak[0] = max(peak[0], case.preprocess_depth())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    case.wait(lambda: case.count("completed") == total, 240, "every job to drain",
             interval_s=1)
    case.wait(lambda: case.lag() == 0, 30, "the lag to reach 0")
    print(f"drained {total} in {time.monotonic() - started:.1f} s")
    watcher.join(timeout=5)
    assert case.stop(bridge) == 0
    assert case.stop(worker) == 0
    assert peak[0] <= window
    assert case.count() == total


def test_a_killed_member_s_partitions_are_taken_over(make_case) -> None:
    case: Case = make_case(partitions=8)
    first = [f"{case.prefix}-a{i:05d}" for i in range(2000)]
    second = [f"{case.prefix}-b{i:05d}" for i in range(3000)]
    a = case.bridge("a")
    case.wait(lambda: "Setting newly assigned partitions {" in case.log_of(a), 60, "a to join")
    b = case.bridge("b")
    case.wait(lambda: "Setting newly assigned partitions {" in case.log_of(b), 60,
             "b to join and the partitions to be shared")
    case.produce(case.jobs(first))
    case.wait(lambda: case.count() == 2000, 60, "the first wave")

    producing = threading.Thread(target=lambda: [case.produce(case.jobs(second[i:i + 300]))
                                                 or time.sleep(0.1)
                                                 for i in range(0, 3000, 300)])
    producing.start()
    time.sleep(0.5)
    a.send_signal(signal.SIGKILL)
    a.wait()
    producing.join()
    case.wait(lambda: case.count("queued") == 5000 and case.lag() == 0, 90,
             "b to take over a's partitions and finish")
    assert case.stop(b) == 0
    chains = case.chains()
    # The killed member may have been the active dispatcher, killed between a pick's publish
    # and its commit: that one job's chain goes out again (the stage lease lets one copy run).
    assert set(chains) == set(first + second) and sum(n - 1 for n in chains.values()) <= 1


def test_a_batch_in_flight_across_a_rebalance_is_still_committed(make_case) -> None:
    """kafka-python keeps a partition's position when a rebalance gives it back to the same
    member, so Kafka will not deliver that batch again: the bridge must still commit it once
    it is durable, or the partition's lag never reaches 0."""
    case: Case = make_case(partitions=4)
    ids = [f"{case.prefix}-{i}" for i in range(8)]
    case.produce(case.jobs(ids))
    blocked = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   "AND strpos(query, 'INSERT INTO tasks') > 0")
    with case.db_engine.connect() as conn:
        hold = conn.begin()
        conn.execute(text("LOCK TABLE tasks IN EXCLUSIVE MODE"))  # admission waits here
        # The reconciler sweeps every second: it meets the lock too, and gives up quickly
        # rather than stopping the loop that keeps the bridge in its group.
        bridge = case.bridge("bridge", "reconcile_interval_s=1")

        def waiting() -> bool:  # a new transaction each time: the view is a snapshot
            with case.db_engine.connect() as probe:
                return bool(probe.execute(blocked).scalar_one())

        case.wait(waiting, 60, "the bridge's batch to wait on the lock")
        # Another member joins (it reads another topic, so the bridge keeps all four
        # partitions) and leaves: two rebalances while the batch is in flight.
        def joins() -> int:
            return case.log_of(bridge).count("Setting newly assigned partitions")

        before = joins()
        other = KafkaConsumer(case.settings.topic_dlq, group_id=case.settings.consumer_group,
                              enable_auto_commit=False, **case.settings.kafka_client_config())
        case.wait(lambda: other.poll(timeout_ms=200) is not None and bool(other.assignment()),
                  60, "the group to rebalance with a second member")
        other.close()
        case.wait(lambda: joins() >= before + 2, 60, "the bridge to take its partitions back")
        assert case.count() == 0
        hold.rollback()
    case.wait(lambda: case.count("queued") == len(ids) and case.lag() == 0, 60,
              "the batch to be admitted and committed after the rebalances")
    assert case.stop(bridge) == 0
    assert set(case.chains()) == set(ids) and max(case.chains().values()) == 1
