"""A private stack for fault scenarios: its own PostgreSQL, Redis and Kafka, the shared
MinIO under a bucket of its own, the bridge and the worker pools as real subprocesses, a
signed-callback receiver and a producer of tiny jobs.

    stack = ChaosStack(seed=7).start()       # services in parallel, then the processes
    ids = stack.produce(20, "kill")          # 20 jobs to the private task topic
    stack.kill("gpu")                        # kill -9 the gpu pool (parent and children)
    stack.start_process("gpu")               # ... and bring it back
    stack.restart_service("redis", kill=True, down_s=2)
    stack.wait_settled(ids, timeout_s=120)   # every job final, its callback settled
    print(stack.audit(ids))                  # tests.chaos.audit.Audit
    stack.close()

Processes run the production entry points: ``sonic-pipeline bridge`` (which execs
``python -m bridge``) and ``sonic-pipeline worker --pool NAME`` (which execs the pool's
``celery worker``), each in a session of its own so a fault can reach the whole pool
(the Celery parent, its children and their ffmpeg). Extra processes of a pool (a second
gpu worker to take over a frozen one) are started with ``start_process("gpu-b",
pool="gpu")``.

Jobs use the ``bench`` engine (``SONIC_BENCH_ENGINE``): the gpu stage holds for
``engine_sleep_s`` and hands over one frame; preprocess, encode, upload and callback are
the real stages on a 64 px portrait and a second of speech. Every fault a scenario injects
is drawn from ``stack.rng`` (seeded) and logged in ``stack.faults`` with its time.

Like systemd's ``Restart=on-failure`` (``ops/systemd``) or Kubernetes, the harness
restarts a process that exits with a failure nobody asked for, after ``RESTART_S``
(``proc.deaths`` keeps each such exit, ``proc.starts`` counts the starts); a process the
harness killed or stopped stays down until a scenario starts it again.

Timings are short so faults resolve in seconds: leases of ``LEASE_TTL_S`` with a beat a
second, a reconciler sweep a second, a stalled job re-sent after ``STALLED_AFTER_S``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from ops.services.postgres import Postgres
from ops.services.redis import Redis
from pipeline.settings import Settings, load
from pipeline.state.db import make_db_engine
from tests.support.kafka_broker import PrivateKafka
from tests.support import pools
from tests.support.receiver import CallbackReceiver
from tests.support.server import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("completed", "failed", "rejected", "cancelled", "expired")
#: Callback states that end the callback stage.
SETTLED = ("delivered", "failed", "none")
SECRET = "whsec_" + "Y2hhb3MtdGVzdC1zZWNyZXQtZm9yLXNpZ25pbmc="
POOL_NAMES = ("gpu", "cpu", "io")
SERVICES = ("postgres", "redis", "kafka")
LEASE_TTL_S = 4
#: Seconds before the supervisor restarts a process that died by itself (systemd's
#: RestartSec, shortened).
RESTART_S = 1.0
STALLED_AFTER_S = 8
#: The shared MinIO of the local stack (the only shared service a scenario touches).
SHARED = load()


def free_block(count: int, low: int = 30000, high: int = 32000) -> int:
    """The first of ``count`` consecutive loopback ports nothing listens on (below the
    ephemeral range, so no client socket takes them meanwhile)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - count)
        if pools.bindable(base, count):
            return base
    raise RuntimeError(f"no {count} free consecutive ports in {low}-{high}")


@dataclass
class Fault:
    """One injected fault: what, to whom, when (monotonic seconds)."""

    at: float
    what: str
    target: str


@dataclass
class Proc:
    """A pipeline process of the stack (the bridge, a pool)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    starts: int = 0
    #: Down on purpose (killed or stopped by the harness): the supervisor leaves it.
    down: bool = False
    #: Exits nobody asked for, as ``(monotonic time, exit code)``.
    deaths: list[tuple[float, int]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.alive else None


class ServiceHandle:
    """One private service: start, wait, stop (clean or kill -9), data loss."""

    def __init__(self, name: str, start: Callable[[], subprocess.Popen[bytes]],
                 wait: Callable[[subprocess.Popen[bytes]], None],
                 data: Path | None = None, after_start: Callable[[], None] | None = None
                 ) -> None:
        self.name = name
        self._start = start
        self._wait = wait
        self.data = data
        self._after = after_start
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.proc = self._start()
        self._wait(self.proc)
        if self._after is not None:
            self._after()

    def stop(self, *, kill: bool = False, timeout_s: float = 30) -> None:
        if not self.alive:
            return
        assert self.proc is not None
        if kill:
            self.proc.send_signal(signal.SIGKILL)
        else:
            # PostgreSQL's fast shutdown is SIGINT; the others stop on SIGTERM.
            self.proc.send_signal(signal.SIGINT if self.name == "postgres" else signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ChaosStack:
    """See the module docstring. ``overrides``: more settings for every process (keys as in
    :class:`pipeline.settings.Settings`); ``engine_sleep_s``: the gpu stage's hold."""

    def __init__(self, root: Path | None = None, *, name: str = "chaos", seed: int = 0,
                 partitions: int = 4, engine_sleep_s: float = 0.3,
                 overrides: dict[str, Any] | None = None) -> None:
        # Short: PostgreSQL's socket path must fit in 107 bytes.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="sonic-chaos-"))
        # A directory we made goes with the stack (logs, data dirs: ~50-70 MB a run), unless
        # SONIC_CHAOS_KEEP asks to keep it for a post-mortem.
        self._own_root = root is None and not os.environ.get("SONIC_CHAOS_KEEP")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # the postgres user walks down to its data dir
        self.name = name
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults: list[Fault] = []
        self.run_id = f"{name}-{os.getpid()}-{int(time.time()) % 100000}"
        self.bucket = f"chaos-{self.run_id}".lower()[:63]
        self.topic = "chaos-tasks"
        self.inputs = self.root / "inputs"
        self.state = self.root / "state"
        self.logs = self.root / "logs"
        for path in (self.inputs, self.state, self.logs):
            path.mkdir(exist_ok=True)
        metrics = free_block(12)
        self.overrides: dict[str, Any] = {
            "state_dir": self.state, "work_dir": self.state / "work",
            "pg_port": free_port(), "redis_port": free_port(), "redis_db": 0,
            "kafka_bootstrap": "127.0.0.1:0",  # set once the broker's port is known
            "topic_tasks": self.topic, "topic_dlq": f"{self.topic}-dlq",
            "topic_control": "chaos-control", "topic_status": "chaos-status",
            "topic_partitions": partitions, "consumer_group": "chaos-bridge",
            "storage_backend": "s3", "s3_endpoint": f"http://{SHARED.host}:{SHARED.s3_port}",
            "s3_bucket": self.bucket, "input_roots": [self.inputs],
            "allow_private_networks": True, "webhook_secret": SECRET,
            "bench_engine": True, "bench_engine_sleep_s": engine_sleep_s,
            "default_engine": "bench",
            "lease_ttl_s": LEASE_TTL_S, "heartbeat_interval_s": 1,
            "reconcile_interval_s": 1, "stalled_after_s": STALLED_AFTER_S,
            "max_attempts": 6, "worker_concurrency": 1, "time_limit_s": 60,
            "metrics_port": metrics, "webhook_timeout_s": 5,
            # The broker's floor (group.min.session.timeout.ms): a bridge killed -9 leaves
            # its partitions to the next one after this.
            "kafka_session_timeout_ms": 6000,
        }
        self.overrides.update(overrides or {})
        self._metrics_next = metrics + 4
        self.kafka = PrivateKafka(SHARED, self.root / "kafka")
        self.overrides["kafka_bootstrap"] = f"127.0.0.1:{self.kafka.port}"
        self.settings: Settings = load(**self.overrides)
        self.env = pools.env_of(self.overrides)
        self.receiver = CallbackReceiver(SECRET)
        self.procs: dict[str, Proc] = {}
        self.services: dict[str, ServiceHandle] = {}
        self._db_engine: Engine | None = None
        self.speech = self.inputs / "speech.wav"
        self.face = self.inputs / "face.jpg"
        self._lock = threading.RLock()
        self._supervising = threading.Event()
        self._supervisor: threading.Thread | None = None

    # --- life cycle ------------------------------------------------------------------------
    def start(self, processes: Iterable[str] = ("bridge", *POOL_NAMES)) -> ChaosStack:
        """Services in parallel, then media, bucket and topics, then the processes (in
        parallel, each waited for until it serves). Returns self; when a step fails,
        stops what it started and raises."""
        try:
            return self._start(processes)
        except BaseException:
            self.close()
            raise

    def _start(self, processes: Iterable[str]) -> ChaosStack:
        started = time.monotonic()
        postgres, redis_svc = Postgres(self.settings), Redis(self.settings)
        self.services = {
            "postgres": ServiceHandle("postgres", postgres.start, postgres.wait_ready,
                                      postgres.data, after_start=None),
            "redis": ServiceHandle("redis", redis_svc.start, redis_svc.wait_ready,
                                   redis_svc.home / "appendonly"),
            "kafka": ServiceHandle("kafka", self._kafka_start, self._kafka_wait,
                                   self.kafka.kafka.data),
        }
        self._pg = postgres
        processes = list(processes)
        pools = [n for n in processes if n != "bridge"]
        marks = {n: self._log_mark(n) for n in processes}
        # Kafka (a JVM, the slowest) boots while the pools, which need only PostgreSQL
        # and Redis, start; the bridge follows Kafka and its topics.
        with ThreadPoolExecutor(5) as pool:
            kafka = pool.submit(self.services["kafka"].start)
            ready = [pool.submit(self._first_postgres), pool.submit(self.services["redis"].start),
                     pool.submit(self._media), pool.submit(self._bucket)]
            for job in ready:
                job.result()
            for name in pools:
                self.start_process(name, wait=False)
            kafka.result()
        self._topics()
        self.receiver.start()
        if "bridge" in processes:
            self.start_process("bridge", wait=False)
        for name in processes:
            self.wait_serving(name, marks[name])
        self._supervisor = threading.Thread(target=self._supervise, name="chaos-supervisor",
                                            daemon=True)
        self._supervisor.start()
        self.started_s = time.monotonic() - started
        return self

    def _log_mark(self, name: str) -> int:
        log = self.logs / f"{name}.log"
        return log.stat().st_size if log.exists() else 0

    def _first_postgres(self) -> None:
        from pipeline.state import migrate

        self.services["postgres"].start()
        self._pg.ensure()
        migrate.upgrade(self.settings)

    def _kafka_start(self) -> subprocess.Popen[bytes]:
        self.kafka.proc = self.kafka.kafka.start()
        return self.kafka.proc

    def _kafka_wait(self, proc: subprocess.Popen[bytes]) -> None:
        self.kafka.kafka.wait_ready(proc)

    def _media(self) -> None:
        from tests.pipeline.media.helpers import PORTRAIT, speak

        shutil.copy(PORTRAIT, self.face)
        speak(self.speech, "Hello there.", speed=220)

    def _bucket(self) -> None:
        from pipeline.storage.s3 import S3Store

        S3Store(self.settings).ensure_bucket()

    def _topics(self) -> None:
        from pipeline.console import topics

        topics.create(self.settings)

    def close(self) -> None:
        """Stop every process and service we started; drop the bucket's objects."""
        self._supervising.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)
        for proc in self.procs.values():
            if proc.alive:
                assert proc.popen is not None
                try:
                    os.killpg(proc.popen.pid, signal.SIGCONT)
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait()
        if self.receiver._thread.is_alive():  # shutdown() waits for a loop that runs
            self.receiver.stop()
        if self._db_engine is not None:
            self._db_engine.dispose()
        for handle in self.services.values():
            handle.stop(kill=handle.name != "postgres")
        if self.kafka.proc is not None and self.kafka.proc.poll() is None:
            self.kafka.kill()  # started, but failed before its handle knew it
        try:
            self._drop_bucket()
        except Exception:  # noqa: BLE001 - best effort: MinIO may be down (a scenario)
            pass
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _drop_bucket(self) -> None:
        client = self.s3_client()
        for key in self.objects(""):
            client.delete_object(Bucket=self.bucket, Key=key)
        client.delete_bucket(Bucket=self.bucket)

    def __enter__(self) -> ChaosStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _supervise(self) -> None:
        """Restart a process that exited with a failure it was not told to (see the
        module docstring)."""
        seen: dict[str, float] = {}
        while not self._supervising.wait(0.25):
            for name, proc in list(self.procs.items()):
                with self._lock:
                    if proc.down or proc.popen is None or proc.popen.poll() in (None, 0):
                        seen.pop(name, None)
                        continue
                    died = seen.setdefault(name, time.monotonic())
                    if time.monotonic() - died < RESTART_S:
                        continue
                    proc.deaths.append((died, int(proc.popen.returncode)))
                    seen.pop(name, None)
                    self.start_process(name, wait=False)

    def deaths(self, since: float = 0.0) -> list[str]:
        """``name (exit N)`` for each exit nobody asked for since ``since``."""
        return [f"{name} (exit {code})" for name, proc in self.procs.items()
                for at, code in proc.deaths if at >= since]

    # --- faults log -------------------------------------------------------------------------
    def fault(self, what: str, target: str) -> None:
        self.faults.append(Fault(time.monotonic(), what, target))

    def last_fault_at(self, since: float = 0.0) -> float | None:
        times = [f.at for f in self.faults if f.at >= since]
        return max(times) if times else None

    # --- services ---------------------------------------------------------------------------
    def stop_service(self, name: str, *, kill: bool = False, lose_data: bool = False) -> None:
        """Stop ``name`` (postgres, redis, kafka): a clean stop, or ``kill`` -9;
        ``lose_data`` also removes its data (Redis' append-only file; Kafka's and
        PostgreSQL's data are kept: losing those is not a fault the product survives)."""
        handle = self.services[name]
        handle.stop(kill=kill)
        if lose_data and name == "redis" and handle.data is not None:
            shutil.rmtree(handle.data, ignore_errors=True)
        self.fault(f"{'kill -9' if kill else 'stop'}{' +data' if lose_data else ''}", name)

    def start_service(self, name: str) -> None:
        """Start ``name`` again and wait until it answers."""
        self.services[name].start()
        self.fault("start", name)

    def restart_service(self, name: str, *, kill: bool = False, down_s: float = 0.0,
                        lose_data: bool = False) -> float:
        """Stop, stay down ``down_s``, start again; returns the seconds it was down."""
        began = time.monotonic()
        self.stop_service(name, kill=kill, lose_data=lose_data)
        if down_s:
            time.sleep(down_s)
        self.start_service(name)
        return time.monotonic() - began

    # --- processes --------------------------------------------------------------------------
    def argv(self, pool: str | None) -> list[str]:
        entry = [sys.executable, "-m", "pipeline.cli"]
        return [*entry, "bridge"] if pool is None else [*entry, "worker", "--pool", pool]

    def start_process(self, name: str, pool: str | None = None,
                      env: dict[str, str] | None = None, wait: bool = True) -> Proc:
        """Start (or restart) the process ``name``: ``bridge`` or a pool (``gpu``, ``cpu``,
        ``io``), or another name with ``pool`` given (None: a bridge). A new name of a pool
        gets metrics ports of its own. ``wait``: until it serves (consumes)."""
        proc = self.procs.get(name)
        if proc is None:
            if pool is None and name in POOL_NAMES:
                pool = name
            extra = dict(env or {})
            if name not in ("bridge", *POOL_NAMES):
                extra.setdefault("SONIC_METRICS_PORT", str(self._metrics_next))
                self._metrics_next += 4
            proc = Proc(name, self.argv(pool), {**self.env, **extra},
                        self.logs / f"{name}.log")
            self.procs[name] = proc
        with self._lock:
            if proc.alive:
                return proc
            mark = proc.log.stat().st_size if proc.log.exists() else 0
            with proc.log.open("ab") as out:
                proc.popen = subprocess.Popen(
                    proc.argv, cwd=ROOT, env=proc.env, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True)
            proc.frozen = False
            proc.down = False
            proc.starts += 1
        if wait:
            self.wait_serving(name, mark)
        return proc

    def start_processes(self, names: Iterable[str]) -> None:
        names = list(names)
        with ThreadPoolExecutor(max(1, len(names))) as pool:
            for job in [pool.submit(self.start_process, n) for n in names]:
                job.result()

    def wait_serving(self, name: str, mark: int = 0, timeout_s: float = 90) -> None:
        """Until ``name``'s log since ``mark`` shows it serving (a pool ``ready.``, the
        bridge ``consuming``)."""
        proc = self.procs[name]
        needle = b"bridge: consuming" if proc.argv[-1] == "bridge" else b" ready."
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.alive:
                raise AssertionError(f"{name} exited ({proc.popen and proc.popen.returncode})"
                                     f" while starting:\n{self.tail(name)}")
            with proc.log.open("rb") as fh:
                fh.seek(mark)
                if needle in fh.read():
                    return
            time.sleep(0.1)
        raise AssertionError(f"{name} not serving after {timeout_s}s:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        log = self.procs[name].log
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) \
            if log.exists() else "(no log)"

    def children(self, name: str) -> list[int]:
        """PIDs of the process's children (a Celery pool's worker processes)."""
        pid = self.procs[name].pid
        if pid is None:
            return []
        try:
            found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return []
        return [int(p) for p in found]

    def signal(self, name: str, sig: int, *, group: bool = True) -> None:
        """Send ``sig`` to ``name``: its whole session (``group``: parent, children and
        their ffmpeg) or its main process only."""
        proc = self.procs[name]
        assert proc.popen is not None and proc.alive, f"{name} is not running"
        if group:
            os.killpg(proc.popen.pid, sig)
        else:
            os.kill(proc.popen.pid, sig)

    def kill(self, name: str, *, group: bool = True) -> None:
        """kill -9 ``name`` (by default the whole session: a machine dying) and reap it."""
        proc = self.procs[name]
        with self._lock:
            proc.down = True
            self.signal(name, signal.SIGKILL, group=group)
            assert proc.popen is not None
            proc.popen.wait()
            proc.frozen = False
        self.fault("kill -9", name)

    def kill_child(self, name: str) -> int | None:
        """kill -9 one worker process of a pool (its Celery parent starts another);
        returns its PID, None when it had none."""
        kids = self.children(name)
        if not kids:
            return None
        victim = self.rng.choice(kids)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            return None
        self.fault("kill -9 child", name)
        return victim

    def freeze(self, name: str) -> None:
        """SIGSTOP the whole process group of ``name``."""
        self.signal(name, signal.SIGSTOP)
        self.procs[name].frozen = True
        self.fault("SIGSTOP", name)

    def thaw(self, name: str) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        self.signal(name, signal.SIGCONT)
        self.procs[name].frozen = False
        self.fault("SIGCONT", name)

    def restart(self, name: str, *, kill: bool = True, wait: bool = True) -> None:
        """kill -9 (or SIGTERM and wait) and start again."""
        proc = self.procs[name]
        if proc.alive:
            if kill:
                self.kill(name)
            else:
                proc.down = True
                self.signal(name, signal.SIGTERM, group=False)
                assert proc.popen is not None
                proc.popen.wait(timeout=60)
                self.fault("SIGTERM", name)
        self.start_process(name, wait=wait)

    def stop_process(self, name: str, timeout_s: float = 60) -> None:
        """SIGTERM ``name`` (thawed first) and wait for its exit: a clean stop, no fault."""
        proc = self.procs[name]
        if not proc.alive:
            return
        assert proc.popen is not None
        proc.down = True
        if proc.frozen:
            self.thaw(name)
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()

    def ensure_running(self, names: Iterable[str] = ("bridge", *POOL_NAMES)) -> None:
        """Every service up, every named process running and not frozen (between
        scenarios on one stack)."""
        for handle in self.services.values():
            if not handle.alive:
                handle.start()
        for name, proc in self.procs.items():
            if proc.alive and proc.frozen:
                self.thaw(name)
        self.start_processes([n for n in names if not (n in self.procs
                                                          and self.procs[n].alive)])

    # --- jobs -------------------------------------------------------------------------------
    def job(self, task_id: str, **extra: Any) -> dict[str, Any]:
        """A job message in the documented shape: tiny inputs, the bench engine, a
        callback to the receiver."""
        return {"task_id": task_id, "image_url": str(self.face), "audio_url": str(self.speech),
                "config": {"min_resolution": 64, "inference_steps": 1, "seed": 1},
                "callback_url": self.receiver.url("/hook"), "engine": "bench",
                "metadata": {"run": self.run_id}, **extra}

    def produce(self, count_or_ids: int | list[str], prefix: str,
                **extra: Any) -> list[str]:
        """Publish jobs to the private task topic (keyed by task id) and flush; returns
        their ids. ``count_or_ids``: a number of new ids under ``prefix`` or the ids."""
        from kafka import KafkaProducer

        if isinstance(count_or_ids, int):
            ids = [f"{prefix}-{self.run_id}-{i}" for i in range(count_or_ids)]
        else:
            ids = list(count_or_ids)
        producer = KafkaProducer(acks="all", linger_ms=5, **self.settings.kafka_client_config())
        try:
            for task_id in ids:
                producer.send(self.topic, key=task_id.encode(),
                              value=json.dumps(self.job(task_id, **extra)).encode())
            producer.flush(timeout=30)
        finally:
            producer.close()
        return ids

    @property
    def db(self) -> Engine:
        if self._db_engine is None:
            self._db_engine = make_db_engine(self.settings, pool_size=2)
        return self._db_engine

    def rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        with self.db.connect() as conn:
            found = conn.execute(text("SELECT * FROM tasks WHERE task_id = ANY(:ids)"),
                                 {"ids": list(ids)}).mappings().all()
        return {r["task_id"]: dict(r) for r in found}

    def counts(self, ids: list[str]) -> dict[str, int]:
        """Status -> jobs among ``ids`` (``absent``: no row yet)."""
        rows = self.rows(ids)
        out: dict[str, int] = {"absent": len(set(ids) - set(rows))}
        for row in rows.values():
            out[row["status"]] = out.get(row["status"], 0) + 1
        return out

    def settled(self, ids: list[str]) -> bool:
        try:
            rows = self.rows(ids)
        except Exception:  # noqa: BLE001 - PostgreSQL down in a scenario
            return False
        return len(rows) == len(set(ids)) and all(
            r["status"] in FINAL and (r["callback_status"] in SETTLED or not r["callback_url"])
            for r in rows.values())

    def wait_until(self, predicate: Callable[[], Any], timeout_s: float, what: str,
                   interval_s: float = 0.1) -> Any:
        """See :func:`tests.support.waiting.wait_for` (with this stack's logs)."""
        return wait_for(predicate, timeout_s, what, interval_s, self.logs)

    def wait_settled(self, ids: list[str], timeout_s: float = 180) -> float:
        """Until every job of ``ids`` is final with its callback settled; returns the
        monotonic time it happened. Raises AssertionError (with counts) on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.settled(ids):
                return time.monotonic()
            time.sleep(0.2)
        raise AssertionError(f"not settled after {timeout_s}s: {self.counts(ids)}")

    def wait_stage(self, ids: list[str], stage: str, timeout_s: float = 60) -> str:
        """Until one job of ``ids`` holds a live lease on ``stage``; returns its id."""
        def holding() -> str | None:
            with self.db.connect() as conn:
                return conn.execute(text(
                    "SELECT task_id FROM tasks WHERE task_id = ANY(:ids) AND lease_stage = :s "
                    "AND lease_expires_at > now() AND lease_owner NOT LIKE 'handoff:%' "
                    "LIMIT 1"), {"ids": ids, "s": stage}).scalar()
        return self.wait_until(holding, timeout_s, f"a job on {stage}", 0.02)

    def lease_owner_pid(self, task_id: str) -> int | None:
        """The PID in the task's lease token (``host:pid:uuid``), None without a lease."""
        with self.db.connect() as conn:
            owner = conn.execute(text("SELECT lease_owner FROM tasks WHERE task_id = :t"),
                                 {"t": task_id}).scalar()
        try:
            return int(str(owner).split(":")[1])
        except (IndexError, ValueError):
            return None

    def process_of(self, pid: int) -> str | None:
        """The stack's process name whose main PID or child ``pid`` is."""
        for name, proc in self.procs.items():
            if proc.pid == pid or pid in self.children(name):
                return name
        return None

    # --- object store ------------------------------------------------------------------------
    def s3_client(self) -> Any:
        import boto3

        s = self.settings
        return boto3.client("s3", endpoint_url=s.s3_endpoint, region_name=s.s3_region,
                            aws_access_key_id=s.s3_access_key.get_secret_value(),
                            aws_secret_access_key=s.s3_secret_key.get_secret_value())

    def objects(self, prefix: str = "videos/") -> list[str]:
        """Every key under ``prefix`` in the stack's bucket."""
        client = self.s3_client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                     Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys

    # --- audit -------------------------------------------------------------------------------
    def audit(self, ids: list[str], expect: dict[str, tuple[str, ...]] | None = None,
              callbacks: bool = True) -> Any:
        """The audit of ``ids`` (:func:`tests.chaos.audit.audit`)."""
        from tests.chaos.audit import audit

        return audit(self.db, ids, self.objects(), self.receiver.requests,
                     expect=expect, callbacks=callbacks)


@dataclass
class Timer:
    """Wall time of a block, in seconds."""

    began: float = field(default_factory=time.monotonic)

    @property
    def s(self) -> float:
        return time.monotonic() - self.began
