"""What the stack benchmarks share: the stack lock, a private corner of the stack (a fresh
topic, a Redis database, a state dir, inputs) with the real bridge and worker pools as
processes, a callback receiver that notes arrival times, and the results files.

    with stack_lock(), BenchStack("overhead", bench_engine_sleep_s=0) as stack:
        stack.start_bridge(); stack.start_workers()
        sent = stack.produce([stack.job("j-1")])
        stack.wait_callbacks(sent)

Nothing here is imported by the pipeline; the scripts in this directory run it directly.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.settings import Settings, load  # noqa: E402
from tests.support.pools import env_of as _env  # noqa: E402

#: Where ``make bench`` leaves its figures (git-ignored): one JSON per benchmark,
#: results.json for all of them, and the plots.
RESULTS = ROOT / "bench-results"
#: The lock every process touching the shared services takes (tests and benchmarks).
STACK_LOCK = Path("/tmp/sonic-stack.lock")
#: Redis database of the benchmarks' workers (flushed before and after).
BENCH_REDIS_DB = 15
SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWZvci1zaWduaW5nLWJlbmNo"
#: The workers' metrics ports start here (clear of the suite's and the stack's).
METRICS_BASE = 29300


@contextmanager
def stack_lock() -> Iterator[None]:
    """Hold the stack lock for the whole benchmark (``SONIC_BENCH_LOCK_HELD=1``: the
    caller holds it already, e.g. ``flock ... make bench`` or a test under it)."""
    if os.environ.get("SONIC_BENCH_LOCK_HELD") == "1":
        yield
        return
    with open(STACK_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear between ranks; NaN when empty."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return data[low] + (data[high] - data[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def write_result(name: str, data: dict[str, Any]) -> Path:
    """``bench-results/<name>.json`` with the core count and the time of the run."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    body = {"cores": os.cpu_count(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **data}
    path.write_text(json.dumps(body, indent=2, default=float))
    return path


def tiny_inputs(folder: Path) -> tuple[Path, Path]:
    """A 256x256 portrait (face kept) and about half a second of speech."""
    from PIL import Image

    from tests.pipeline.media.helpers import PORTRAIT, speak

    folder.mkdir(parents=True, exist_ok=True)
    face = folder / "face.jpg"
    with Image.open(PORTRAIT) as image:
        image.convert("RGB").resize((256, 256)).save(face, quality=90)
    return face, speak(folder / "hi.wav", "Hi there.", speed=220)


class BenchStack:
    """A fresh topic, Redis database and state dir on the shared stack, with the real
    bridge (``python -m bridge``) and worker pools as processes of their own."""

    def __init__(self, name: str, **overrides: Any) -> None:
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"sonic-bench-{name}-"))
        self.topic = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        self.face, self.speech = tiny_inputs(self.root / "inputs")
        self.overrides: dict[str, Any] = {
            "topic_tasks": self.topic, "topic_dlq": f"{self.topic}-dlq",
            "consumer_group": f"{self.topic}-g", "redis_db": BENCH_REDIS_DB,
            "state_dir": self.root / "state", "input_roots": [self.root / "inputs"],
            "storage_backend": "local", "storage_dir": self.root / "objects",
            "allow_private_networks": True, "webhook_secret": SECRET,
            "metrics_port": METRICS_BASE, "bench_engine": True, "default_engine": "bench",
            "reconcile_interval_s": 10, **overrides}
        (self.root / "state").mkdir()
        self.settings: Settings = load(**self.overrides)
        self.env = _env(self.overrides)
        self.receiver = _TimedReceiver(SECRET).start()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._db: Any = None
        self.redis().flushdb()
        self.create_topic()

    # --- services --------------------------------------------------------------------
    @property
    def db(self) -> Any:
        from pipeline.state.db import make_db_engine

        if self._db is None:
            self._db = make_db_engine(self.settings, pool_size=2)
        return self._db

    def redis(self) -> Any:
        import redis

        password = self.settings.redis_password
        return redis.Redis(host=self.settings.redis_host, port=self.settings.redis_port,
                           db=BENCH_REDIS_DB,
                           password=password.get_secret_value() if password else None)

    def create_topic(self, partitions: int = 16) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(**self.settings.kafka_client_config())
        admin.create_topics([NewTopic(self.topic, partitions, 1),
                             NewTopic(f"{self.topic}-dlq", 1, 1)])
        admin.close()

    # --- processes -------------------------------------------------------------------
    def _start(self, key: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / "state" / f"{key}.log", "ab")
        self.procs[key] = subprocess.Popen(argv, cwd=ROOT, env=env or self.env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)

    def start_bridge(self) -> None:
        self._start("bridge", [sys.executable, "-m", "bridge"],
                    dict(self.env, SONIC_METRICS_PORT="0"))

    def start_workers(self, pools: Sequence[str] = ("gpu", "cpu", "io"),
                      **overrides: Any) -> None:
        """Each pool as ``sonic-pipeline worker --pool P`` would run it."""
        from pipeline.commands import worker_argv

        settings = load(**{**self.overrides, **overrides})
        env = _env({**self.overrides, **overrides})
        for pool in pools:
            self._start(pool, worker_argv(pool, settings), env)

    def wait_workers(self, pools: Sequence[str] = ("gpu", "cpu", "io"),
                     timeout: float = 90) -> None:
        """Until every pool answers a ping (its children forked, its queues consumed)."""
        from pipeline.chains import make_app

        app = make_app(self.settings)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=1.0) or []
            names = {name.split("@")[0] for reply in replies for name in reply}
            if set(pools) <= names:
                return
            time.sleep(0.5)
        raise RuntimeError(f"workers {pools} not up after {timeout} s (logs in {self.root})")

    def stop(self, key: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.procs.pop(key, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def pid(self, key: str) -> int:
        return self.procs[key].pid

    # --- jobs ------------------------------------------------------------------------
    def job(self, task_id: str, **extra: Any) -> dict[str, Any]:
        return {"task_id": task_id, "image_url": str(self.face), "audio_url": str(self.speech),
                "config": {"min_resolution": 64, "inference_steps": 1, "seed": 1},
                "engine": "bench", "callback_url": self.receiver.url(f"/hook/{task_id}"),
                **extra}

    def producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(acks="all", linger_ms=0, **self.settings.kafka_client_config())

    def produce(self, jobs: Sequence[dict[str, Any]], rate: float | None = None,
                producer: Any = None) -> dict[str, float]:
        """Send ``jobs`` (at ``rate`` per second, or at once); wall time each was sent."""
        own = producer is None
        producer = producer or self.producer()
        sent: dict[str, float] = {}
        started = time.monotonic()
        for i, job in enumerate(jobs):
            if rate:
                pause = started + i / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            sent[job["task_id"]] = time.time()
            producer.send(self.topic, key=job["task_id"].encode(),
                          value=json.dumps(job).encode())
            if rate:
                producer.flush()
        producer.flush()
        if own:
            producer.close()
        return sent

    def wait_callbacks(self, task_ids: Sequence[str], timeout: float) -> dict[str, float]:
        """Arrival wall time of each task's callback (those that came within ``timeout``)."""
        deadline = time.monotonic() + timeout
        wanted = set(task_ids)
        while time.monotonic() < deadline:
            if wanted <= self.receiver.arrived.keys():
                break
            time.sleep(0.02)
        return {t: self.receiver.arrived[t] for t in wanted if t in self.receiver.arrived}

    def timelines(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per task: status, received/queued times and each stage's start, end and duration
        (Postgres clock, epoch seconds)."""
        from sqlalchemy import text

        out: dict[str, dict[str, Any]] = {}
        with self.db.connect() as conn:
            for row in conn.execute(text(
                    "SELECT task_id, status, extract(epoch FROM received_at) AS received, "
                    "extract(epoch FROM queued_at) AS queued FROM tasks "
                    "WHERE task_id = ANY(:ids)"), {"ids": list(task_ids)}).mappings():
                out[row["task_id"]] = {"status": row["status"], "received": float(row["received"]),
                                       "queued": float(row["queued"] or 0), "stages": {}}
            for row in conn.execute(text(
                    "SELECT task_id, stage, event, extract(epoch FROM at) AS at, duration_s "
                    "FROM task_events WHERE task_id = ANY(:ids) "
                    "AND event IN ('started', 'succeeded') ORDER BY id"),
                    {"ids": list(task_ids)}).mappings():
                stage = out[row["task_id"]]["stages"].setdefault(row["stage"], {})
                stage[row["event"]] = float(row["at"])
                if row["event"] == "succeeded":
                    stage["duration_s"] = float(row["duration_s"] or 0)
        return out

    def count(self, where: str = "") -> int:
        from sqlalchemy import text

        with self.db.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM tasks WHERE kafka_topic = :t "
                                         f"{where}"), {"t": self.topic}).scalar())

    # --- the end ---------------------------------------------------------------------
    def close(self) -> None:
        from kafka import KafkaAdminClient
        from sqlalchemy import text

        for key in list(self.procs):
            self.stop(key)
        self.receiver.stop()
        try:
            # In batches: each deleted live row updates its tenant's counts (a row trigger),
            # and a hundred thousand updates of one row in one transaction take minutes.
            deleted = 1
            while deleted:
                with self.db.begin() as conn:
                    deleted = conn.execute(text(
                        "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks "
                        "WHERE kafka_topic = :t LIMIT 2000)"), {"t": self.topic}).rowcount
            with self.db.begin() as conn:
                conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": self.topic})
            self.db.dispose()
        finally:
            admin = KafkaAdminClient(**self.settings.kafka_client_config())
            admin.delete_topics([self.topic, f"{self.topic}-dlq"])
            admin.close()
            self.redis().flushdb()
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TimedReceiver:
    """The suite's signed-callback receiver, noting when each task's callback arrived."""

    def __init__(self, secret: str) -> None:
        from tests.support.receiver import CallbackReceiver

        arrived: dict[str, float] = {}

        class Receiver(CallbackReceiver):
            def record(self, received: Any) -> Any:
                task_id = received.path.rsplit("/", 1)[-1]
                arrived.setdefault(task_id, time.time())
                return super().record(received)

        self.arrived = arrived
        self._server = Receiver(secret)

    def start(self) -> _TimedReceiver:
        self._server.start()
        return self

    def url(self, path: str) -> str:
        return self._server.url(path)

    def stop(self) -> None:
        self._server.stop()


def rss_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of ``pid`` in MB (``/proc``)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", math.nan), fields.get("VmHWM", math.nan)
