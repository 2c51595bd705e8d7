"""The chain on the real stack: Celery workers (one process per pool), Redis, Postgres,
MinIO and a signed-callback receiver, with real media."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from ops.s3 import MinIO, install_minio
from pipeline.celery_config import POOLS
from pipeline.chains import dispatch_one, make_app
from pipeline.commands import worker_argv
from pipeline.settings import Settings, load
from tests.pipeline.media.helpers import PORTRAIT, speak
from tests.support import pools
from tests.support.server import free_port
from tests.support.receiver import CallbackReceiver

#: The e2e workers' input cap, small so a test can exceed it cheaply.
MAX_INPUT_BYTES = 4 * 1024 * 1024
SECRET = "whsec_" + "ZTJlLXRlc3Qtc2VjcmV0LWZvci1zaWduaW5n"


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    db_engine: Engine
    app: Celery
    inputs: Path
    speech: Path
    receiver: CallbackReceiver
    topic: str
    minio: MinIO
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def submit(self, task_id: str, *, image: str | None = None, audio: str | None = None,
               callback: bool = True, **extra: Any) -> str:
        """Admit a job the way the bridge does (row, then chain), without Kafka."""
        payload = {"task_id": task_id, "image_url": image or str(self.inputs / "face.jpg"),
                   "audio_url": audio or str(self.speech),
                   "config": {"min_resolution": 256, "inference_steps": 4,
                              "dynamic_scale": 1.1, "motion_scale": 1.05, "seed": 7},
                   "metadata": {"case": task_id}, **extra}
        if callback:
            payload["callback_url"] = self.receiver.url("/hook")
        with self.db_engine.begin() as conn:
            conn.execute(text("""
                INSERT INTO tasks (task_id, kafka_topic, status, stage, payload, config,
                                   callback_url, engine, queued_at)
                VALUES (:t, :topic, 'queued', 'preprocess', CAST(:p AS jsonb),
                        CAST(:c AS jsonb), :cb, :engine, now())"""),
                {"t": task_id, "topic": self.topic, "p": _json(payload),
                 "c": _json(payload["config"]), "cb": payload.get("callback_url"),
                 "engine": extra.get("engine")})
        dispatch_one(self.app, task_id, 5)
        return task_id

    def wait_final(self, task_id: str, timeout: float = 120, callback: bool = True
                   ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.row(task_id)
            settled = row["callback_status"] in ("delivered", "failed", "none")
            if row["status"] in ("completed", "failed", "cancelled") and (
                    settled or not callback):
                return row
            time.sleep(0.3)
        raise AssertionError(f"{task_id} not final after {timeout}s: {self.row(task_id)}")

    def row(self, task_id: str) -> dict[str, Any]:
        with self.db_engine.connect() as conn:
            return dict(conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                     {"t": task_id}).mappings().one())

    def events(self, task_id: str) -> list[tuple[str, str]]:
        with self.db_engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT stage, event FROM task_events WHERE task_id = :t ORDER BY id"),
                {"t": task_id})]

    def start_worker(self, pool: str) -> subprocess.Popen[bytes]:
        # A session of its own, so a test can kill the whole pool (parent and children).
        proc = pools.spawn(worker_argv(pool, self.settings), self.env,
                           self.settings.state_dir / f"worker-{pool}.log")
        self.workers[pool] = proc
        return proc

    def kill_pool(self, pool: str) -> None:
        """kill -9 the pool's parent and children at once (a machine dying)."""
        proc = self.workers.pop(pool)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def wait_stage(self, task_id: str, stage: str, timeout: float = 60) -> None:
        """Wait until ``stage`` of the task holds a live lease (the stage is running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.row(task_id)
            if row["lease_stage"] == stage and row["lease_owner"]:
                return
            time.sleep(0.05)
        raise AssertionError(f"{task_id} never ran {stage}: {self.row(task_id)}")

    def stop_worker(self, pool: str) -> None:
        proc = self.workers.pop(pool, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _json(data: Any) -> str:
    import json

    return json.dumps(data)


@pytest.fixture(scope="package")
def e2e(stack: Settings, db_engine: Engine, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Stack]:
    """The e2e pools, MinIO and callback receiver, stopped after tests/e2e's last test."""
    with pools.lease("tests/e2e", stack) as lease:
        yield from _e2e(stack, db_engine, tmp_path_factory, lease)


def _e2e(stack: Settings, db_engine: Engine, tmp_path_factory: pytest.TempPathFactory,
         lease: pools.Lease) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    inputs = root / "inputs"
    inputs.mkdir()
    shutil.copy(PORTRAIT, inputs / "face.jpg")
    speech = speak(inputs / "speech.wav", "Hello there. This is a short test of the pipeline.")
    bin_dir = stack.state_dir / "bin"
    install_minio(bin_dir)
    s3_state = load(state_dir=root / "s3", s3_bucket="sonic-e2e", storage_dir=None)
    minio = MinIO(s3_state, port=free_port(), bin_dir=bin_dir)
    minio.wait_ready(minio.start())
    minio.ensure()
    overrides: dict[str, Any] = {
        "redis_db": lease.redis_db, "state_dir": root / "state", "input_roots": [inputs],
        "storage_backend": "s3", "s3_endpoint": minio.endpoint, "s3_bucket": "sonic-e2e",
        "allow_private_networks": True, "webhook_secret": SECRET,
        "heartbeat_interval_s": 1, "lease_ttl_s": 6, "max_attempts": 4,
        "worker_concurrency": 1, "time_limit_s": 120, "max_input_bytes": MAX_INPUT_BYTES,
        "metrics_port": lease.metrics_port,
    }
    (root / "state").mkdir()
    settings = load(**overrides)
    receiver = CallbackReceiver(SECRET).start()
    env = pools.env_of(overrides)
    app = make_app(settings)
    e2e = Stack(settings, env, db_engine, app, inputs, speech, receiver,
                f"e2e-{os.getpid()}", minio)
    for pool in POOLS:
        e2e.start_worker(pool)
    try:
        yield e2e
    finally:
        pools.stop(list(e2e.workers.values()), timeout_s=30)  # all at once
        e2e.workers.clear()
        receiver.stop()
        minio.stop()


@pytest.fixture
def reconciler(e2e: Stack) -> Iterator[list[Any]]:
    """The reconciler sweeping the e2e tasks every half second, as the bridge does."""
    from pipeline.reconcile import sweep

    stop = threading.Event()
    sweeps: list[Any] = []

    def loop() -> None:
        while not stop.wait(0.5):
            sweeps.append(sweep(
                e2e.db_engine, topic=e2e.topic, max_attempts=4,
                dispatch=lambda t, p, s: dispatch_one(e2e.app, t, p, s)))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield sweeps
    stop.set()
    thread.join(timeout=10)


@pytest.fixture
def stack_e2e(e2e: Stack) -> Stack:
    for pool, proc in list(e2e.workers.items()):
        if proc.poll() is not None:  # a test killed it: bring the pool back
            e2e.start_worker(pool)
    return e2e


@pytest.fixture(scope="package")
def sched(stack: Settings, db_engine: Engine, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Any]:
    """Kafka -> bridge -> dispatcher -> real pools, a gpu stage of each job's chosen
    length: the scheduler's end-to-end tests (tests/e2e/scheduling.py)."""
    from tests.e2e.scheduling import start_sched

    with pools.lease("tests/e2e scheduling", stack) as lease:
        yield from start_sched(stack, db_engine, tmp_path_factory.mktemp("sched"), lease)
