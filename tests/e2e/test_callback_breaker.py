"""A dead callback receiver on a real io worker pool (Celery prefork, 2 processes, Redis,
PostgreSQL): its breaker opens after a few timeouts, its callbacks are then delayed without
a request, and another receiver's callbacks keep their normal latency meanwhile."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from pipeline.celery_config import TASK_NAMES
from pipeline.chains import make_app
from pipeline.commands import worker_argv
from pipeline.settings import Settings, load
from pipeline.webhooks.flow import build
from tests.support import pools
from tests.support.receiver import CallbackReceiver, Received, Reply
from tests.support.trickle import TrickleServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "whsec_" + "YnJlYWtlci1lMmUtdGVzdC1zZWNyZXQ="
FAILURES = 3
#: Longer than the test: the dead receiver's breaker stays open throughout.
OPEN_S = 120.0
ATTEMPT_S = 1.0
#: Worker processes of the io pool.
CONCURRENCY = 2


class Stamped(CallbackReceiver):
    """Notes when each task's callback arrived (monotonic seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: dict[str, float] = {}

    def record(self, received: Received) -> Reply:
        if received.payload:
            self.arrived.setdefault(received.payload["task_id"], time.monotonic())
        return super().record(received)


@dataclass
class IoPool:
    settings: Settings
    app: Celery
    db_engine: Engine
    worker: subprocess.Popen[bytes]

    def send(self, task_id: str, url: str) -> float:
        """A finished job's row at the callback stage, and its callback message; the time
        it was sent."""
        with self.db_engine.begin() as conn:
            conn.execute(text("""
                INSERT INTO tasks (task_id, status, stage, payload, callback_url,
                                   received_at, finished_at, result_url)
                VALUES (:t, 'completed', 'callback', '{}', :u, now(), now(), 'https://cdn/x')
            """), {"t": task_id, "u": url})
        sent = time.monotonic()
        self.app.send_task(TASK_NAMES["callback"], args=[task_id], queue="callback",
                           task_id=f"{task_id}:callback", ignore_result=True)
        return sent

    def rows(self, prefix: str) -> list[dict[str, Any]]:
        with self.db_engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(
                "SELECT * FROM tasks WHERE task_id LIKE :p ORDER BY task_id"),
                {"p": f"{prefix}%"}).mappings()]

    def deliveries(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        with self.db_engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(text(
                "SELECT task_id, detail FROM task_events WHERE task_id LIKE :p "
                "AND event = 'delivery' ORDER BY id"), {"p": f"{prefix}%"})]


@pytest.fixture(scope="module")
def io_pool(stack: Settings, db_engine: Engine, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[IoPool]:
    with pools.lease("test_callback_breaker", stack) as lease:
        yield from _io_pool(db_engine, tmp_path_factory.mktemp("breaker"), lease)


def _io_pool(db_engine: Engine, root: Path, lease: pools.Lease) -> Iterator[IoPool]:
    """A Redis database of its own (broker and flow-control keys) and metrics ports."""
    overrides: dict[str, Any] = {
        "redis_db": lease.redis_db, "state_dir": root / "state",
        "allow_private_networks": True, "webhook_secret": SECRET,
        "webhook_timeout_s": ATTEMPT_S, "webhook_breaker_failures": FAILURES,
        "webhook_breaker_open_s": OPEN_S, "webhook_rate": "1000/second",
        "worker_concurrency": CONCURRENCY, "heartbeat_interval_s": 1, "lease_ttl_s": 6,
        "metrics_port": lease.metrics_port,
    }
    (root / "state").mkdir()
    settings = load(**overrides)
    worker = pools.spawn(worker_argv("io", settings), pools.env_of(overrides),
                         root / "worker-io.log")
    pool = IoPool(settings, make_app(settings), db_engine, worker)
    try:
        yield pool
    finally:
        pools.stop([worker], timeout_s=30)


def _latency(pool: IoPool, receiver: Stamped, task_id: str, timeout: float = 60) -> float:
    sent = pool.send(task_id, receiver.url("/hook"))
    deadline = time.monotonic() + timeout
    while task_id not in receiver.arrived:
        assert time.monotonic() < deadline, f"{task_id}: no callback in {timeout} s"
        time.sleep(0.002)
    return receiver.arrived[task_id] - sent


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def test_a_dead_receiver_opens_its_breaker_and_another_keeps_its_latency(
        io_pool: IoPool, unique: str, tmp_path: Path) -> None:
    with Stamped(SECRET) as healthy, TrickleServer("silent", limit=10) as dead:
        _latency(io_pool, healthy, f"brk-warm-{unique}", timeout=90)  # the worker is up
        before = [_latency(io_pool, healthy, f"brk-before-{unique}-{i}") for i in range(15)]

        # 12 callbacks to a receiver that never answers (each attempt ends at 1 s), sent
        # at once, while healthy callbacks keep coming one at a time.
        dead_url = dead.url("/hook")
        flood = [io_pool.send(f"brk-dead-{unique}-{i:02d}", dead_url) for i in range(12)]
        assert flood
        flow = build(io_pool.settings)
        dead_host = f"http://127.0.0.1:{dead.port}"
        opened_by = time.monotonic() + 30
        while flow.breakers.state(dead_host) != "open":
            assert time.monotonic() < opened_by, "the breaker never opened"
            time.sleep(0.05)
        opened_at = time.monotonic()

        # Open: a second wave to the dead receiver (20 over 2 s) next to healthy callbacks.
        def second_wave() -> None:
            for i in range(20):
                io_pool.send(f"brk-dead-{unique}-w{i:02d}", dead_url)
                time.sleep(0.1)

        wave = threading.Thread(target=second_wave)
        wave.start()
        during: list[float] = []
        while wave.is_alive() or len(during) < 15:
            during.append(_latency(io_pool, healthy, f"brk-during-{unique}-{len(during)}"))
        wave.join()
        time.sleep(1.0)  # the last of the wave reach the worker
        connections = len(dead.opened)
    p50_before, p50_during = statistics.median(before), statistics.median(during)
    rows = io_pool.rows(f"brk-dead-{unique}")
    deliveries = io_pool.deliveries(f"brk-dead-{unique}")
    held = [(t, d) for t, d in deliveries if d.get("code") == "callback.paused"]
    sent = [d for _, d in deliveries if d.get("code") == "callback.retry"]
    print(f"\nhealthy p50 before {p50_before * 1000:.1f} ms (max {max(before) * 1000:.1f}), "
          f"while the dead receiver's breaker is open {p50_during * 1000:.1f} ms "
          f"(max {max(during) * 1000:.1f}); breaker open "
          f"{opened_at - flood[0]:.2f} s after the flood; dead receiver connections "
          f"{connections}; {len(held)} deliveries held back")

    # The dead receiver got FAILURES requests, and at most one more per other worker
    # process that had already sent its own when the breaker opened; the rest were held.
    assert FAILURES <= connections <= FAILURES + CONCURRENCY - 1
    assert len(rows) == 12 + 20
    assert sum(r["callback_attempts"] or 0 for r in rows) == connections
    assert {r["status"] for r in rows} == {"completed"}
    assert {r["callback_status"] for r in rows} == {"retrying"}  # delayed, none dropped
    # Every one was held back (those that had failed once, on their retry), with the
    # breaker's reason and its open time left as the delay.
    assert len(sent) == connections and all(d["timeout"] for d in sent)
    assert {t for t, _ in held} == {r["task_id"] for r in rows}
    assert {d["reason"] for _, d in held} == {"breaker_open"}
    assert all(OPEN_S - 30 < d["delay_s"] <= OPEN_S * 1.1 + 0.01 for _, d in held)
    # The healthy receiver's callbacks kept their latency while the breaker was open.
    assert p50_during <= 2 * p50_before + 0.02
    # And the io pool's metrics show it (parent on SONIC_METRICS_PORT + 3).
    scraped = _scrape(io_pool.settings.metrics_port + 3)
    assert f'sonic_webhook_breaker_state{{host="{dead_host}"}} 2.0' in scraped
    assert f'sonic_webhook_paused_total{{host="{dead_host}",reason="breaker_open"}}' in scraped
