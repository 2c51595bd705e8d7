"""The HTTP service on the real stack, for tests/http and tests/browser.

One per test session (``http_stack``, registered in tests/conftest.py so both folders
share it), stopped as soon as the last test that uses it is done (not at the end of the
session: its processes would idle through every later folder): a private MinIO and Redis, a Kafka topic of its own, the three worker pools,
``python -m bridge`` and ``python -m pipeline.http`` on a free port, all as real
processes with the same ``SONIC_*`` environment. Tokens: tenants ``acme``, ``globex`` and
``initech`` (the browser's: a tenant with no other work, so the fair dispatcher serves it
next) and an operator (``*``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.support import pools

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"acme": "acme-token-0123456789", "globex": "globex-token-0123456789",
          "initech": "initech-token-0123456789",
          "*": "operator-token-0123456789"}
#: The service's per-part cap in these tests (small, so "too large" costs little).
MAX_INPUT_BYTES = 3 * 1024 * 1024
#: Render knobs that keep a job short on a CPU.
FAST = {"min_resolution": "256", "inference_steps": "4", "seed": "7"}


@dataclass
class HttpStack:
    base_url: str
    env: dict[str, str]
    topic: str
    db_engine: Engine
    portrait: Path
    speech: Path
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self, tenant: str | None = "acme", **options: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **options)

    def submit(self, client: httpx.Client, **form: str) -> str:
        """Upload the portrait and the speech; the new task id (asserts 202)."""
        with self.portrait.open("rb") as image, self.speech.open("rb") as audio:
            answer = client.post("/v1/tasks", data={**FAST, **form}, files={
                "image": ("face.jpg", image, "image/jpeg"),
                "audio": ("speech.wav", audio, "audio/wav")})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["task_id"])

    def row(self, task_id: str) -> dict[str, Any] | None:
        with self.db_engine.connect() as conn:
            found = conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                 {"t": task_id}).mappings().first()
        return dict(found) if found else None

    def wait_admitted(self, task_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.row(task_id)
            if row is not None:
                return row
            time.sleep(0.1)
        raise AssertionError(f"{task_id} not admitted after {timeout}s\n" + self.log_tails())

    def objects(self, bucket: str) -> list[str]:
        """Every key in ``bucket`` of the stack's MinIO."""
        from pipeline.settings import load
        from pipeline.storage.client import make_client

        client = make_client(load(s3_endpoint=self.env["SONIC_S3_ENDPOINT"]))
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def wait_final(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.row(task_id)
            if row and row["status"] in ("completed", "failed", "rejected", "cancelled"):
                return row
            time.sleep(0.3)
        raise AssertionError(f"{task_id} not final after {timeout}s: {self.row(task_id)}\n"
                             + self.log_tails())

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = pools.spawn(argv, self.env, self.logs / f"{name}.log")
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        pools.stop(list(self.procs.values()))


#: Node id of the last collected test that uses ``http_stack`` (empty: none).
_last_user: list[str] = []
#: The live stack's cleanup (run once, by the last user's teardown or the session's end).
_cleanup: list[Callable[[], None]] = []


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that use the stack run one after the other, where the last of them was
    (tests/browser's next to tests/http's), so it lives only while they run."""
    users = [item for item in items if "http_stack" in getattr(item, "fixturenames", ())]
    if not users:
        return
    ids = {id(item) for item in users}
    last = items.index(users[-1])
    before = [item for item in items[:last] if id(item) not in ids]
    after = [item for item in items[last + 1:] if id(item) not in ids]
    items[:] = [*before, *users, *after]
    _last_user[:] = [users[-1].nodeid]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    if item.nodeid in _last_user:
        _stop_stack()


def _stop_stack() -> None:
    while _cleanup:
        _cleanup.pop()()


def _wait_healthy(stack: HttpStack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        server = stack.procs["http"]
        if server.poll() is not None:
            raise AssertionError(f"the HTTP service exited {server.returncode}\n"
                                 + stack.log_tails())
        try:
            answer = httpx.get(f"{stack.base_url}/healthz", timeout=5)
            if answer.status_code == 200:
                return
            last = answer.text
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"the HTTP service never got healthy: {last}\n" + stack.log_tails())


@pytest.fixture(scope="session")
def http_stack(stack: Any, db_engine: Engine, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[HttpStack]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from ops.s3 import MinIO, install_minio
    from ops.services.redis import Redis
    from pipeline.celery_config import POOLS
    from pipeline.commands import worker_argv
    from pipeline.settings import load
    from tests.pipeline.media.helpers import PORTRAIT, speak
    from tests.support.server import free_port

    root = tmp_path_factory.mktemp("http")
    owner = "tests/support/http_stack"
    inputs, state, logs = root / "inputs", root / "state", root / "logs"
    for folder in (inputs, state, logs):
        folder.mkdir()
    portrait = inputs / "face.jpg"
    shutil.copy(PORTRAIT, portrait)
    speech = speak(inputs / "speech.wav", "Hello there. This is a short test of the page.")

    undo: list[Any] = []  # cleanups, run last first whatever failed
    topic = f"test-http-{uuid.uuid4().hex[:8]}"
    port = free_port()
    http: HttpStack | None = None

    def cleanup() -> None:
        for step in reversed(undo):
            step()
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})

    _cleanup.append(cleanup)
    try:
        bin_dir = stack.state_dir / "bin"
        install_minio(bin_dir)
        minio = MinIO(load(state_dir=root / "s3", s3_bucket="sonic-http", storage_dir=None),
                      port=free_port(), bin_dir=bin_dir)
        undo.append(minio.stop)
        minio.wait_ready(minio.start())
        minio.ensure()
        redis_port = free_port()
        redis = Redis(load(state_dir=root / "redis", redis_port=redis_port))
        undo.append(redis.stop)
        redis.wait_ready(redis.start())
        # A Redis of its own (database 0 there); the metrics ports from the registry.
        metrics_port = pools.take_metrics_ports(owner)
        undo.append(lambda: pools.release(owner))

        admin = KafkaAdminClient(**stack.kafka_client_config())
        undo.append(admin.close)
        admin.create_topics([NewTopic(topic, 2, 1), NewTopic(f"{topic}-dlq", 1, 1)])
        undo.append(lambda: admin.delete_topics([topic, f"{topic}-dlq"]))
        overrides = {
            "STATE_DIR": state, "TOPIC_TASKS": topic, "TOPIC_DLQ": f"{topic}-dlq",
            "CONSUMER_GROUP": f"{topic}-group", "REDIS_PORT": redis_port, "REDIS_DB": 0,
            "STORAGE_BACKEND": "s3", "S3_ENDPOINT": minio.endpoint, "S3_BUCKET": "sonic-http",
            "UPLOAD_BUCKET": "sonic-http-uploads", "INPUT_BUCKETS": "sonic-http-uploads",
            "INPUT_ROOTS": inputs, "MAX_INPUT_BYTES": MAX_INPUT_BYTES,
            "API_TOKENS": ",".join(f"{tenant}:{token}" for tenant, token in TOKENS.items()),
            "API_SESSION_SECRET": "http-test-session-secret", "API_PORT": port,
            "HEARTBEAT_INTERVAL_S": 1, "LEASE_TTL_S": 6, "WORKER_CONCURRENCY": 1,
            "TIME_LIMIT_S": 120, "METRICS_PORT": metrics_port, "RECONCILE_INTERVAL_S": 2,
        }
        values = {key: str(value) for key, value in overrides.items()}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SONIC_")}
        env.update({f"SONIC_{key}": value for key, value in values.items()})
        http = HttpStack(f"http://127.0.0.1:{port}", env, topic, db_engine, portrait, speech,
                         logs)
        undo.append(http.stop_all)
        settings = load(**{key.lower(): value for key, value in values.items()})
        for pool in POOLS:
            http.start(f"worker-{pool}", worker_argv(pool, settings))
        http.start("bridge", [sys.executable, "-m", "bridge"])
        http.start("http", [sys.executable, "-m", "pipeline.http", "--port", str(port)])
        _wait_healthy(http)
        yield http
    finally:
        _stop_stack()
