"""Redis restarts under load: every job reaches one final state, none runs twice, and every
worker pool serves again. The workers here use a Redis of their own (so the restart touches
no other test) and run under ``sonic-pipeline worker --pool all``, the supervisor that
restarts a pool that dies; the reconciler sweeps as the bridge does, with the broker epoch.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from ops.services.redis import Redis
from pipeline.chains import dispatch_one, make_app
from pipeline.epoch import RedisEpoch
from pipeline.reconcile import sweep
from tests.e2e.conftest import Stack
from tests.e2e.test_recovery import _objects
from tests.support import pools
from tests.support.server import free_port

# The suite's short version is the chaos suite's redis-restart-x2 (tests/chaos: Redis
# killed twice under a run, the second time losing its append-only file, audited); this
# one, under the supervisor of `worker --pool all`, runs with `make chaos`.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

#: Jobs in flight when Redis goes away: queued, running and between stages.
JOBS = 6


class PrivateStack:
    """A Redis, the three pools under one supervisor, and a reconciler thread."""

    def __init__(self, e2e: Stack, root: Any, metrics_port: int) -> None:
        port = free_port()
        state = root / "state"
        state.mkdir(parents=True)
        self.settings = e2e.settings.model_copy(update={
            "redis_port": port, "redis_db": 0, "state_dir": state, "work_dir": state / "work",
            "metrics_port": metrics_port})
        self.redis = Redis(self.settings)
        self.env = dict(e2e.env, SONIC_REDIS_PORT=str(port), SONIC_REDIS_DB="0",
                        SONIC_STATE_DIR=str(state), SONIC_METRICS_PORT=str(metrics_port))
        self.stack = replace(e2e, settings=self.settings, env=self.env,
                             app=make_app(self.settings), topic=f"restart-{os.getpid()}",
                             workers={})
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: subprocess.Popen[bytes] | None = None
        self.sweeps: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reconcile, daemon=True)

    def start_redis(self) -> None:
        self.server = self.redis.start()
        self.redis.wait_ready(self.server)

    def kill_redis(self, *, lose_data: bool) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()
        if lose_data:
            shutil.rmtree(self.redis.home / "appendonly", ignore_errors=True)

    def start(self) -> None:
        self.start_redis()
        log = open(self.settings.state_dir / "workers.log", "ab")
        self.workers = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--pool", "all"], env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._thread.start()

    def _reconcile(self) -> None:
        client = self.redis.client()
        while not self._stop.wait(0.5):
            try:
                self.sweeps.append(sweep(
                    self.stack.db_engine, topic=self.stack.topic,
                    max_attempts=4, stalled_after_s=None, 
                    broker=RedisEpoch(client, self.stack.db_engine, self.stack.topic),
                    dispatch=lambda t, p, s: dispatch_one(self.stack.app, t, p, s)))
            except Exception as exc:  # noqa: BLE001 - Redis down: the bridge logs and retries
                self.sweeps.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.workers is not None and self.workers.poll() is None:
            self.workers.send_signal(signal.SIGTERM)
            try:
                self.workers.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.workers.pid, signal.SIGKILL)
                self.workers.wait()
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=20)


@pytest.fixture
def private(e2e: Stack, tmp_path: Any) -> Iterator[PrivateStack]:
    private = PrivateStack(e2e, tmp_path, pools.take_metrics_ports("test_restarts"))
    try:
        private.start()
        yield private
    finally:
        private.stop()
        pools.release("test_restarts")


def wait_spread(stack: Stack, ids: list[str], timeout: float = 120) -> str:
    """Until one job is rendering (gpu lease) and another has passed the gpu stage or is
    still queued: jobs queued, running and between stages all at once. Returns the id of
    the one rendering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [stack.row(t) for t in ids]
        rendering = [r["task_id"] for r in rows if r["lease_stage"] == "gpu"]
        waiting = any(r["status"] == "queued" or (r["lease_owner"] is None and
                                                   r["status"] == "running") for r in rows)
        if rendering and waiting:
            return rendering[0]
        time.sleep(0.1)
    raise AssertionError([(t, stack.row(t)["status"], stack.row(t)["stage"]) for t in ids])


@pytest.mark.parametrize("lose_data", [True, False], ids=["data-lost", "append-only-file"])
def test_redis_restart_mid_run_every_job_final_once(private: PrivateStack, unique: str,
                                                    lose_data: bool) -> None:
    stack = private.stack
    ids = [stack.submit(f"redis-{'lost' if lose_data else 'aof'}-{i}-{unique}")
           for i in range(JOBS)]
    rendering = wait_spread(stack, ids)
    private.kill_redis(lose_data=lose_data)
    time.sleep(4)
    private.start_redis()
    rows = {t: stack.wait_final(t, timeout=300) for t in ids}
    assert {t: (r["status"], r["callback_status"]) for t, r in rows.items()} == {
        t: ("completed", "delivered") for t in ids}
    for task_id in ids:
        events = stack.events(task_id)
        assert [s for s, e in events if e == "succeeded"] == [
            "preprocess", "gpu", "encode", "upload", "callback"], events
        assert _objects(stack, task_id) == [f"videos/{task_id}.jpg", f"videos/{task_id}.mp4"]
        hooks = [r for r in stack.receiver.requests if r.payload and
                 r.payload["task_id"] == task_id]
        assert len({h.headers["webhook-id"] for h in hooks}) == 1, hooks
    # The render under way when Redis went away was not cut short and run again.
    assert stack.events(rendering).count(("gpu", "started")) == 1, stack.events(rendering)
    assert any(getattr(s, "broker_restarted", False) for s in private.sweeps)
    # Every pool serves again: a job submitted after the restart runs every stage.
    after = stack.submit(f"redis-after-{'lost' if lose_data else 'aof'}-{unique}")
    assert stack.wait_final(after, timeout=180)["status"] == "completed"
    assert private.workers is not None and private.workers.poll() is None
