"""The whole path for the scheduler's end-to-end tests: Kafka -> ``python -m bridge`` ->
PostgreSQL -> the bridge's dispatcher -> real Celery worker pools (``celery -A pipeline``).

One set of worker pools serves every test of tests/e2e (fixture ``sched`` in
``tests/e2e/conftest.py``); each test takes a :class:`Flow`: a topic, consumer group and
task-id prefix of its own, with bridges started on it. The gpu pool runs the ``bench``
engine (:mod:`pipeline.engines.bench`, ``SONIC_BENCH_ENGINE_STEP_S`` = :data:`STEP_S`): a
job's gpu stage takes ``config.inference_steps x 0.05 s`` (:func:`hold_s`) and no CPU, so
the gpu is the bottleneck it is in production, and its start and end are known. Media are
tiny (a 384 px portrait, a second of speech, one 64 px frame); storage is the local
backend; no callbacks.

Times come from PostgreSQL: a job's start is its first stage's ``started`` event, its gpu
start that of the gpu stage, its end ``tasks.finished_at``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from sqlalchemy import Engine, text

from pipeline.chains import dispatch_one, make_app, queue_keys
from pipeline.commands import worker_argv
from pipeline.settings import STAGES, Settings, load
from tests.pipeline.media.helpers import PORTRAIT, speak
from tests.support import pools
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("completed", "failed", "rejected", "cancelled", "expired")
#: Seconds of gpu time per inference step of a job.
STEP_S = 0.05


def hold_s(inference_steps: int) -> float:
    """Seconds the gpu stage holds the gpu for a job of ``inference_steps``."""
    return inference_steps * STEP_S


@dataclass
class Sched:
    """The shared worker pools and inputs (see the module docstring)."""

    settings: Settings
    env: dict[str, str]
    db_engine: Engine
    root: Path
    face: Path
    speech: Path
    broken: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, pool: str) -> None:
        self.workers[pool] = pools.spawn(worker_argv(pool, self.settings), self.env,
                                         self.root / f"worker-{pool}.log")

    def stop_workers(self) -> None:
        pools.stop(list(self.workers.values()))
        self.workers.clear()

    def warm_up(self) -> None:
        """One job straight into Celery (no Kafka) until final: every pool is serving."""
        task_id = f"sched-warm-{uuid.uuid4().hex[:8]}"
        message = job_message(self, task_id)
        with self.db_engine.begin() as conn:
            conn.execute(text("""
                INSERT INTO tasks (task_id, kafka_topic, status, stage, payload, config,
                                   queued_at)
                VALUES (:t, 'sched-warm', 'queued', 'preprocess', CAST(:p AS jsonb),
                        CAST(:c AS jsonb), now())"""),
                {"t": task_id, "p": json.dumps(message), "c": json.dumps(message["config"])})
        dispatch_one(make_app(self.settings), task_id, 5)
        try:
            wait_for(lambda: self.status(task_id) in FINAL, 120, "the warm-up job",
                     logs=self.root)
            assert self.status(task_id) == "completed", self.status(task_id)
        finally:
            with self.db_engine.begin() as conn:
                conn.execute(text("DELETE FROM tasks WHERE task_id = :t"), {"t": task_id})

    def status(self, task_id: str) -> str | None:
        with self.db_engine.connect() as conn:
            return conn.execute(text("SELECT status FROM tasks WHERE task_id = :t"),
                                {"t": task_id}).scalar()

    def purge(self) -> None:
        """Drop every stage message waiting in Redis (a test's window left behind)."""
        client = redis.Redis(host=self.settings.redis_host, port=self.settings.redis_port,
                             db=self.settings.redis_db)
        keys = queue_keys(STAGES)
        if keys:
            client.delete(*keys)
        client.close()


def job_message(sched: Sched, task_id: str, steps: int = 1, **extra: Any) -> dict[str, Any]:
    """A job of ``steps`` x 0.05 s of gpu time on the tiny inputs."""
    return {"task_id": task_id, "image_url": str(sched.face), "audio_url": str(sched.speech),
            "config": {"min_resolution": 64, "inference_steps": steps, "seed": 1}, **extra}


def start_sched(stack: Settings, db_engine: Engine, root: Path, lease: pools.Lease
                ) -> Iterator[Sched]:
    """The ``sched`` fixture's body: inputs, three pools (on ``lease``'s Redis database
    and metrics ports), one warm-up job."""
    inputs = root / "inputs"
    inputs.mkdir(parents=True)
    face = inputs / "face.jpg"
    shutil.copy(PORTRAIT, face)
    speech = speak(inputs / "speech.wav", "Hello there.", speed=220)
    broken = inputs / "broken.jpg"  # a JPEG header and then noise: image.undecodable
    broken.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2048))
    overrides: dict[str, Any] = {
        "redis_db": lease.redis_db, "state_dir": root / "state", "input_roots": inputs,
        "storage_backend": "local", "metrics_port": lease.metrics_port,
        "worker_concurrency": 2,
        "heartbeat_interval_s": 1, "lease_ttl_s": 10,
        # Every job's gpu stage: hold_s(its inference_steps), no render.
        "bench_engine": True, "default_engine": "bench", "bench_engine_step_s": STEP_S,
    }
    (root / "state").mkdir()
    settings = load(**{k: ([v] if k == "input_roots" else v) for k, v in overrides.items()})
    sched = Sched(settings, pools.env_of(overrides), db_engine, root, face, speech, broken)
    sched.purge()
    try:
        for pool in ("gpu", "cpu", "io"):
            sched.start_worker(pool)
        sched.warm_up()
        yield sched
    finally:
        sched.stop_workers()
        sched.purge()


@dataclass
class Flow:
    """One test's topic, consumer group and bridges over the shared pools."""

    sched: Sched
    topic: str
    partitions: int
    settings: dict[str, Any]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.topic

    # --- processes -----------------------------------------------------------------------
    def bridge(self, **overrides: Any) -> subprocess.Popen[bytes]:
        """``python -m bridge`` on this flow's topic (``overrides``: more settings)."""
        env = dict(self.sched.env)
        env.update(pools.env_of(dict(self.settings, **overrides)))
        log = open(self.sched.root / f"{self.topic}-bridge-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout_s)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with self.sched.db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": self.topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": self.topic})
        self.sched.purge()
        admin = KafkaAdminClient(**self.sched.settings.kafka_client_config())
        try:
            admin.delete_topics([self.topic, f"{self.topic}-dlq"])
        finally:
            admin.close()

    # --- Kafka ---------------------------------------------------------------------------
    def job(self, name: str, steps: int = 1, **extra: Any) -> dict[str, Any]:
        return job_message(self.sched, f"{self.prefix}-{name}", steps, **extra)

    def produce(self, records: list[tuple[int, str | None, dict[str, Any]]]) -> None:
        """Send ``(partition, kafka key, message)`` in this order, and flush."""
        producer = KafkaProducer(acks="all", linger_ms=5,
                                 **self.sched.settings.kafka_client_config())
        try:
            for partition, key, message in records:
                producer.send(self.topic, key=key.encode() if key else None,
                              value=json.dumps(message).encode(), partition=partition)
            producer.flush()
        finally:
            producer.close()

    # --- PostgreSQL ----------------------------------------------------------------------
    def rows(self) -> dict[str, dict[str, Any]]:
        with self.sched.db_engine.connect() as conn:
            found = conn.execute(text("SELECT * FROM tasks WHERE kafka_topic = :t"),
                                 {"t": self.topic}).mappings().all()
        return {r["task_id"]: dict(r) for r in found}

    def count(self, *statuses: str) -> int:
        with self.sched.db_engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM tasks WHERE kafka_topic = :t AND status = ANY(:s)"),
                {"t": self.topic, "s": list(statuses)}).scalar_one())

    def starts(self, stage: str) -> dict[str, datetime]:
        """Each job's first ``started`` event of ``stage``."""
        with self.sched.db_engine.connect() as conn:
            found = conn.execute(text("""
                SELECT e.task_id, min(e.at) FROM task_events e JOIN tasks t USING (task_id)
                WHERE t.kafka_topic = :t AND e.stage = :s AND e.event = 'started'
                GROUP BY 1"""), {"t": self.topic, "s": stage}).all()
        return {r[0]: r[1] for r in found}

    def gpu_starts(self) -> list[tuple[float, str]]:
        """(epoch seconds, task id) of every gpu stage start of the flow's jobs, in time
        order."""
        with self.sched.db_engine.connect() as conn:
            return [(float(r[0]), r[1]) for r in conn.execute(text("""
                SELECT extract(epoch FROM e.at), e.task_id FROM task_events e
                JOIN tasks t USING (task_id)
                WHERE t.kafka_topic = :t AND e.stage = 'gpu' AND e.event = 'started'
                ORDER BY e.at, e.id"""), {"t": self.topic})]

    def wait(self, predicate: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.1) -> Any:
        return wait_for(predicate, timeout_s, what, interval_s, logs=self.sched.root)


def make_flow(sched: Sched, partitions: int = 4, **settings: Any) -> Flow:
    """A new topic (and its DLQ) and the bridge settings for it."""
    topic = f"sched-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(**sched.settings.kafka_client_config())
    try:
        admin.create_topics([NewTopic(topic, partitions, 1), NewTopic(f"{topic}-dlq", 1, 1)])
    finally:
        admin.close()
    base = {"topic_tasks": topic, "topic_dlq": f"{topic}-dlq",
            "consumer_group": f"{topic}-group", "metrics_port": 0,
            "dispatch_idle_s": 0.05}
    base.update(settings)
    return Flow(sched, topic, partitions, base)
