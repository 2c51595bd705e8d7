"""Helpers for the bridge's integration tests: a topic, group, Redis DB and task-id prefix
of its own per test; the bridge and Celery workers as real subprocesses."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata
from sqlalchemy import Engine, text

from pipeline.chains import queue_keys
from pipeline.settings import STAGES, Settings

ROOT = Path(__file__).resolve().parents[2]
#: Redis databases the bridge tests take turns on (flushed before and after each test).
REDIS_DBS = (8, 9, 10, 11, 12, 13, 15)
_next_db = iter(range(10**6))


def seed_message(task_id: str, **extra: Any) -> dict[str, Any]:
    """The seed article's job, as it is."""
    return {"task_id": task_id, "audio_url": "/uploads/user1/audio.mp3",
            "image_url": "/uploads/user1/avatar.jpg", "duration": 30.5,
            "config": {"min_resolution": 1024, "expand_ratio": 0.18, "inference_steps": 25,
                       "dynamic_scale": 1.1, "motion_scale": 1.05},
            "callback_url": "https://api.example.com/callback", **extra}


@dataclass
class Case:
    settings: Settings
    db_engine: Engine
    prefix: str
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return self.settings.topic_tasks

    @property
    def env(self) -> dict[str, str]:
        s = self.settings
        return dict(os.environ, SONIC_TOPIC_TASKS=s.topic_tasks, SONIC_TOPIC_DLQ=s.topic_dlq,
                    SONIC_TOPIC_CONTROL=s.topic_control,
                    SONIC_CONSUMER_GROUP=s.consumer_group, SONIC_REDIS_DB=str(s.redis_db),
                    SONIC_BACKLOG_MAX=str(s.backlog_max), SONIC_BACKLOG_LOW=str(s.backlog_low),
                    SONIC_GPU_SLOTS=str(s.gpu_slots), SONIC_DISPATCH_LEAD=str(s.dispatch_lead),
                    SONIC_TENANT_INFLIGHT_MAX=str(s.tenant_inflight_max),
                    SONIC_METRICS_PORT=str(s.metrics_port),
                    SONIC_MAX_MESSAGE_BYTES=str(s.max_message_bytes))

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis(host=self.settings.redis_host, port=self.settings.redis_port,
                           db=self.settings.redis_db)

    # --- Kafka ---------------------------------------------------------------------------
    def produce(self, messages: list[tuple[bytes | None, bytes | None]],
                partition: int | None = None) -> None:
        producer = KafkaProducer(linger_ms=20, batch_size=256 * 1024, acks="all",
                                 **self.settings.kafka_client_config())
        for key, value in messages:
            producer.send(self.topic, key=key, value=value, partition=partition)
        producer.flush()
        producer.close()

    def jobs(self, ids: list[str], **extra: Any) -> list[tuple[bytes, bytes]]:
        return [(t.encode(), json.dumps(seed_message(t, **extra)).encode()) for t in ids]

    def partitions(self) -> list[TopicPartition]:
        consumer = KafkaConsumer(**self.settings.kafka_client_config())
        try:
            return [TopicPartition(self.topic, p)
                    for p in sorted(consumer.partitions_for_topic(self.topic) or ())]
        finally:
            consumer.close()

    def offsets(self) -> tuple[dict[int, int], dict[int, int]]:
        """(committed, end) offsets per partition for the case's group."""
        consumer = KafkaConsumer(group_id=self.settings.consumer_group,
                                 enable_auto_commit=False, **self.settings.kafka_client_config())
        try:
            tps = self.partitions()
            ends = consumer.end_offsets(tps)
            committed = {tp.partition: consumer.committed(tp) or 0 for tp in tps}
            return committed, {tp.partition: ends[tp] for tp in tps}
        finally:
            consumer.close()

    def lag(self) -> int:
        committed, ends = self.offsets()
        return sum(ends[p] - committed[p] for p in ends)

    def reset_offsets(self) -> None:
        """Rewind the (idle) group to the start: every message is delivered again."""
        consumer = KafkaConsumer(group_id=self.settings.consumer_group,
                                 enable_auto_commit=False, **self.settings.kafka_client_config())
        try:
            consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in self.partitions()})
        finally:
            consumer.close()

    def dead_letters(self, count: int, timeout_s: float = 30) -> list[Any]:
        consumer = KafkaConsumer(self.settings.topic_dlq, auto_offset_reset="earliest",
                                 consumer_timeout_ms=int(timeout_s * 1000),
                                 **self.settings.kafka_client_config())
        out = []
        try:
            for record in consumer:
                out.append(record)
                if len(out) >= count:
                    break
        finally:
            consumer.close()
        return out

    # --- processes ---------------------------------------------------------------------------
    def bridge(self, name: str = "bridge", *overrides: str, **env: str) -> subprocess.Popen[bytes]:
        """``python -m bridge``; ``overrides`` are ``NAME=VALUE`` settings (``SONIC_NAME``)."""
        log = open(self.logs / f"{name}-{len(self.procs)}.log", "wb")
        for item in overrides:
            key, _, value = item.partition("=")
            env[f"SONIC_{key.upper()}"] = value
        proc = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=ROOT,
                                env=dict(self.env, **env), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def worker(self, mode: str = "chain", pool: str = "solo",
               concurrency: int = 1) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")
        argv = [sys.executable, "-m", "celery", "-A", "tests.bridge.noop_app", "worker",
                "-Q", ",".join(STAGES), "-P", pool, "-c", str(concurrency),
                "-n", f"noop-{self.prefix}-{len(self.procs)}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING"]
        proc = subprocess.Popen(argv, cwd=ROOT, env=dict(self.env, NOOP_MODE=mode),
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout_s: float = 60) -> int:
        proc.send_signal(sig)
        return proc.wait(timeout=timeout_s)

    def wait(self, predicate: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.2) -> None:
        """``wait_for``; a failure carries every process's log tail (a live bridge first
        writes its threads' stacks there: SIGUSR1)."""
        try:
            wait_for(predicate, timeout_s, what, interval_s)
        except AssertionError as exc:
            for proc in self.procs:
                if proc.poll() is None and "bridge" in proc.args:
                    proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
            tails = []
            for log in sorted(self.logs.glob("*.log")):
                lines = [line for line in log.read_text(errors="replace").splitlines()
                         if " kafka.conn" not in line and " kafka.net" not in line]
                tails.append(f"--- {log.name} ---\n" + "\n".join(lines[-80:]))
            raise AssertionError("\n".join([str(exc), *tails])) from None

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        index = self.procs.index(proc)
        found = sorted(self.logs.glob(f"*-{index}.log"))
        return found[0].read_text(errors="replace") if found else ""

    # --- Postgres and Redis ------------------------------------------------------------------
    def count(self, status: str | None = None) -> int:
        sql = "SELECT count(*) FROM tasks WHERE kafka_topic = :t"
        if status is not None:
            sql += " AND status = :s"
        with self.db_engine.connect() as conn:
            return int(conn.execute(text(sql), {"t": self.topic, "s": status}).scalar_one())

    def rows(self) -> dict[str, dict[str, Any]]:
        with self.db_engine.connect() as conn:
            found = conn.execute(text("SELECT * FROM tasks WHERE kafka_topic = :t"),
                                 {"t": self.topic}).mappings().all()
        return {r["task_id"]: dict(r) for r in found}

    def events(self, event: str) -> Counter[str]:
        with self.db_engine.connect() as conn:
            found = conn.execute(text(
                "SELECT e.task_id FROM task_events e JOIN tasks t USING (task_id) "
                "WHERE t.kafka_topic = :t AND e.event = :e"), {"t": self.topic, "e": event})
            return Counter(r[0] for r in found)

    def chain_messages(self) -> list[dict[str, Any]]:
        """Every first-task message waiting in the preprocess queue (all priority keys)."""
        out = []
        for key in queue_keys(["preprocess"]):
            for raw in self.redis.lrange(key, 0, -1):
                message = json.loads(raw)
                message["decoded_body"] = json.loads(base64.b64decode(message["body"]))
                message["key"] = key
                out.append(message)
        return out

    def chains(self) -> Counter[str]:
        """Chain messages in Redis per task id."""
        return Counter(m["decoded_body"][0][0] for m in self.chain_messages())

    def preprocess_depth(self) -> int:
        return sum(self.redis.llen(k) for k in queue_keys(["preprocess"]))


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture
def make_case(stack: Settings, db_engine: Engine, unique: str,
              tmp_path: Path) -> Iterator[Callable[..., Case]]:
    """``make_case(partitions=4, **settings)``: a fresh topic, group, Redis DB and prefix."""
    made: list[Case] = []
    admin = KafkaAdminClient(**stack.kafka_client_config())

    def make(partitions: int = 4, **overrides: Any) -> Case:
        topic = f"test-bridge-{unique}-{len(made)}"
        admin.create_topics([NewTopic(topic, partitions, 1), NewTopic(f"{topic}-dlq", 1, 1),
                             NewTopic(f"{topic}-control", 1, 1)])
        # Each case has its own control topic: a stray command elsewhere never reaches it.
        update = {"topic_tasks": topic, "topic_dlq": f"{topic}-dlq",
                  "topic_control": f"{topic}-control",
                  "consumer_group": f"{topic}-group", "metrics_port": 0,
                  "redis_db": REDIS_DBS[next(_next_db) % len(REDIS_DBS)],
                  # No workers here: a window as large as any test's run lets the
                  # dispatcher send every admitted job (a test narrows it to test it).
                  "gpu_slots": 100_000, "tenant_inflight_max": 1_000_000}
        update.update(overrides)
        case = Case(stack.model_copy(update=update), db_engine, f"{unique}{len(made)}", tmp_path)
        case.redis.flushdb()
        made.append(case)
        return case

    yield make
    for case in made:
        for proc in case.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": case.topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": case.topic})
        case.redis.flushdb()
        admin.delete_topics([case.topic, case.settings.topic_dlq, case.settings.topic_control])
    admin.close()
