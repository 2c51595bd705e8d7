"""The whole path with the control topic, for the cancellation and deadline tests: Kafka ->
``python -m bridge`` (admission, dispatcher, control consumer) -> PostgreSQL -> the e2e
worker pools (:class:`tests.e2e.conftest.Stack`: the builtin engine, signed callbacks to
the tests' receiver).

Each module takes a :class:`Flow`: a task topic, a DLQ, a control topic and a consumer
group of its own, and one bridge on them, its metrics on a port of its own. A gpu stage
that lasts is a job of ``BLOCKER_CONFIG`` on half a minute of speech (the builtin engine
renders 512x512 at ~170 frames/s on two cores: a few seconds of speech were over before
the jobs it holds back were preprocessed); it is cancelled when the test is done with it,
which is itself a cancel of a running job.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from tests.e2e.conftest import Stack
from tests.support.server import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("completed", "failed", "rejected", "cancelled", "expired")
#: A gpu stage of many frame batches at 512 px: it runs until cancelled.
BLOCKER_CONFIG = {"min_resolution": 512, "inference_steps": 25, "seed": 3}
#: A job as small as the builtin engine renders.
SMALL_CONFIG = {"min_resolution": 64, "inference_steps": 1, "seed": 1}
#: Stages that do work (the callback stage runs for a cancelled or expired job too).
WORK_STAGES = ("preprocess", "gpu", "encode", "upload")


@dataclass
class Flow:
    stack: Stack
    topic: str
    control_topic: str
    settings: dict[str, str]
    logs: Path
    metrics_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _producer: KafkaProducer | None = None

    # --- processes -----------------------------------------------------------------------
    def start_bridge(self) -> subprocess.Popen[bytes]:
        """``python -m bridge`` on the flow's topics; returns once its dispatcher is
        active (its metrics say so)."""
        env = dict(self.stack.env, **self.settings)
        log = open(self.logs / f"bridge-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.wait(lambda: proc.poll() is None and self.metric(
            "sonic_dispatcher_active", topic=self.topic) == 1, 60, "the bridge to start")
        return proc

    def stop_bridge(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self._producer is not None:
            self._producer.close()
        with self.stack.db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": self.topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": self.topic})
        admin = KafkaAdminClient(**self.stack.settings.kafka_client_config())
        try:
            admin.delete_topics([self.topic, f"{self.topic}-dlq", self.control_topic])
        finally:
            admin.close()

    # --- Kafka ---------------------------------------------------------------------------
    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(acks="all", linger_ms=0,
                                           **self.stack.settings.kafka_client_config())
        return self._producer

    def job(self, name: str, *, config: dict[str, Any] | None = None,
            audio: Path | None = None, **extra: Any) -> str:
        """Produce a job (keyed by its ordering key, if any); its task id."""
        task_id = f"{self.topic}-{name}"
        message = {"task_id": task_id, "image_url": str(self.stack.inputs / "face.jpg"),
                   "audio_url": str(audio or self.stack.speech),
                   "config": config or SMALL_CONFIG, "metadata": {"case": name},
                   "callback_url": self.stack.receiver.url("/hook"), **extra}
        key = message.get("ordering_key")
        self.producer.send(self.topic, key=key.encode() if key else None,
                           value=json.dumps(message).encode()).get(timeout=10)
        return task_id

    def control(self, message: dict[str, Any] | bytes, key: str | None = None) -> float:
        """Produce a control record; the monotonic time it was acknowledged."""
        value = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.producer.send(self.control_topic, key=key.encode() if key else None,
                           value=value).get(timeout=10)
        return time.monotonic()

    def cancel(self, *task_ids: str, reason: str | None = None) -> float:
        body: dict[str, Any] = {"command": "cancel", "task_ids": list(task_ids)}
        if reason is not None:
            body["reason"] = reason
        return self.control(body, key=task_ids[0])

    # --- state ---------------------------------------------------------------------------
    def row(self, task_id: str) -> dict[str, Any]:
        return self.stack.row(task_id)

    def status(self, task_id: str) -> str | None:
        with self.stack.db_engine.connect() as conn:
            return conn.execute(text("SELECT status FROM tasks WHERE task_id = :t"),
                                {"t": task_id}).scalar()

    def events(self, task_id: str) -> list[tuple[str | None, str]]:
        return self.stack.events(task_id)

    def gpu_holder(self) -> str | None:
        """The task of this flow whose gpu stage holds a live lease, if any."""
        with self.stack.db_engine.connect() as conn:
            return conn.execute(text(
                "SELECT task_id FROM tasks WHERE kafka_topic = :t AND lease_stage = 'gpu' "
                "AND lease_owner IS NOT NULL"), {"t": self.topic}).scalar()

    def callbacks(self, task_id: str) -> list[dict[str, Any]]:
        return [r.payload for r in list(self.stack.receiver.requests)
                if r.verified and r.payload and r.payload.get("task_id") == task_id]

    def settled(self, task_id: str) -> dict[str, Any] | None:
        """The row once final with its callback delivered (or none owed), else None."""
        if self.status(task_id) is None:  # not admitted yet
            return None
        row = self.row(task_id)
        if row["status"] in FINAL and row["callback_status"] in ("delivered", "none",
                                                                  "failed"):
            return row
        return None

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample from the bridge's /metrics (None: absent or not served yet)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=2) as answer:
                body = answer.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return sample.value
        return None

    def wait(self, predicate: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.05) -> Any:
        """See :func:`tests.support.waiting.wait_for` (with this flow's logs)."""
        return wait_for(predicate, timeout_s, what, interval_s, self.logs)


def make_flow(stack: Stack, logs: Path, **settings: Any) -> Flow:
    """New topics and a consumer group; the bridge's settings (``settings`` override)."""
    topic = f"ctl-{uuid.uuid4().hex[:10]}"
    control = f"{topic}-control"
    admin = KafkaAdminClient(**stack.settings.kafka_client_config())
    try:
        admin.create_topics([NewTopic(topic, 2, 1), NewTopic(f"{topic}-dlq", 1, 1),
                             NewTopic(control, 1, 1)])
    finally:
        admin.close()
    port = free_port()
    values = {"topic_tasks": topic, "topic_dlq": f"{topic}-dlq", "topic_control": control,
              "consumer_group": f"{topic}-group", "metrics_port": port,
              "dispatch_idle_s": 0.05, "gpu_slots": 1, "dispatch_lead": 3,
              "metrics_scan_s": 0.5, **settings}
    env = {f"SONIC_{k.upper()}": str(v) for k, v in values.items()}
    return Flow(stack, topic, control, env, logs, port)


def module_flow(stack: Stack, logs: Path, **settings: Any) -> Iterator[Flow]:
    """A module fixture's body: :func:`make_flow`, its bridge started; closed after."""
    made = make_flow(stack, logs, **settings)
    try:
        made.start_bridge()
        yield made
    finally:
        made.close()
