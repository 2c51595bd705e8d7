"""The CLI on the real stack: Kafka -> ``python -m bridge`` -> PostgreSQL -> the three worker
pools (``celery -A pipeline``) -> the stack's MinIO, on topics, a consumer group and a Redis
database of their own; inputs uploaded by ``submit`` itself. Verbs run through click's
CliRunner (in this process, with the stack's settings as its environment) or, for the
progress bar, as the console script in a real pseudo-terminal (:func:`run_pty`)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, text

from pipeline.cli import cli
from pipeline.commands import worker_argv
from pipeline.settings import Settings, load
from pipeline.storage.s3 import S3Store
from tests.pipeline.media.helpers import PORTRAIT, speak
from tests.support import pools

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "sonic-pipeline"
FINAL = ("completed", "failed", "rejected", "cancelled", "expired")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def plain(text_: str) -> str:
    """Terminal output without escape sequences and carriage returns."""
    return _ANSI.sub("", text_)


def run_pty(argv: list[str], env: dict[str, str], timeout_s: float = 180,
            interrupt: Callable[[str], bool] | None = None) -> tuple[int, str]:
    """Run ``argv`` on a new pseudo-terminal (120 x 40) until it exits; return its exit code
    and everything it wrote. ``interrupt(output so far)`` true: type Ctrl-C once."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            os.chdir(ROOT)
            # Ctrl-C must reach it as at a shell prompt, even when this run inherited an
            # ignored SIGINT (a job started in the background): exec keeps SIG_IGN.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    out, sent = bytearray(), False
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"{argv} still running after {timeout_s}s:\n"
                                     + plain(out.decode(errors="replace"))[-3000:])
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    break
                out += chunk
            if interrupt is not None and not sent and interrupt(out.decode(errors="replace")):
                os.write(fd, b"\x03")
                sent = True
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@dataclass
class CliStack:
    settings: Settings
    overrides: dict[str, Any]
    db_engine: Engine
    root: Path
    face: Path
    speech: Path
    wall: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return pools.env_of(self.overrides)

    @property
    def topic(self) -> str:
        return self.settings.topic_tasks

    def invoke(self, *args: str, **env: str) -> Result:
        """``sonic-pipeline ARGS`` in this process, with this stack's settings (``env``:
        more SONIC_* variables)."""
        full: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SONIC_")}
        full.update({k: v for k, v in self.env.items() if k.startswith("SONIC_")})
        full.update(env)
        return CliRunner().invoke(cli, list(args), env=full, catch_exceptions=False)

    def row(self, task_id: str) -> dict[str, Any] | None:
        with self.db_engine.connect() as conn:
            found = conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                 {"t": task_id}).mappings().first()
        return dict(found) if found else None

    def wait_final(self, task_id: str, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = self.row(task_id)
            if row is not None and row["status"] in FINAL:
                return row
            time.sleep(0.2)
        raise AssertionError(f"{task_id} not final after {timeout_s}s: {self.row(task_id)}\n"
                             + self.logs())

    def logs(self) -> str:
        tails = []
        for log in sorted(self.root.glob("*.log")):
            lines = [x for x in log.read_text(errors="replace").splitlines()
                     if " kafka." not in x]
            tails.append(f"--- {log.name} ---\n" + "\n".join(lines[-30:]))
        return "\n".join(tails)

    def start(self, name: str, argv: list[str]) -> None:
        self.procs[name] = pools.spawn(argv, self.env, self.root / f"{name}.log")

    def stop(self) -> None:
        pools.stop(list(self.procs.values()))


@pytest.fixture(scope="package")
def cli_stack(stack: Settings, db_engine: Engine, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[CliStack]:
    """The pools and bridge of tests/cli, stopped after its last test."""
    with pools.lease("tests/cli", stack) as lease:
        yield from _cli_stack(stack, db_engine, tmp_path_factory, lease)


def _cli_stack(stack: Settings, db_engine: Engine, tmp_path_factory: pytest.TempPathFactory,
               lease: pools.Lease) -> Iterator[CliStack]:
    import cv2

    root = tmp_path_factory.mktemp("cli")
    inputs = root / "inputs"
    inputs.mkdir()
    face = inputs / "face.jpg"
    shutil.copy(PORTRAIT, face)
    speech = speak(inputs / "speech.wav", "Hello there, this is a test.", speed=200)
    ramp = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    wall = inputs / "wall.png"  # no face in it: image.no_face
    cv2.imwrite(str(wall), np.dstack([ramp, ramp, ramp]))
    name = f"cli-{uuid.uuid4().hex[:8]}"
    overrides: dict[str, Any] = {
        "redis_db": lease.redis_db, "state_dir": root / "state",
        "metrics_port": lease.metrics_port,
        "topic_tasks": name, "topic_dlq": f"{name}-dlq", "topic_control": f"{name}-control",
        "topic_status": f"{name}-status", "topic_partitions": 2,
        "consumer_group": f"{name}-group", "dispatch_idle_s": 0.05,
        "storage_backend": "s3", "s3_endpoint": f"http://{stack.host}:{stack.s3_port}",
        "s3_bucket": "sonic-cli-results", "upload_bucket": "sonic-cli-uploads",
        "input_buckets": "sonic-cli-uploads", "worker_concurrency": 1,
        "heartbeat_interval_s": 1, "lease_ttl_s": 10,
    }
    (root / "state").mkdir()
    settings = load(**{k: v for k, v in overrides.items() if k != "input_buckets"},
                    input_buckets=["sonic-cli-uploads"])
    for bucket in (settings.s3_bucket, settings.upload_bucket):
        S3Store(settings.model_copy(update={"s3_bucket": bucket})).ensure_bucket()
    cs = CliStack(settings, overrides, db_engine, root, face, speech, wall)
    made = cs.invoke("topics", "create")
    assert made.exit_code == 0, made.output
    try:
        for pool in ("gpu", "cpu", "io"):
            cs.start(f"worker-{pool}", worker_argv(pool, settings))
        cs.start("bridge", [sys.executable, "-m", "bridge"])
        yield cs
    finally:
        cs.stop()
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": name})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": name})
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**stack.kafka_client_config())
        try:
            admin.delete_topics([name, f"{name}-dlq", f"{name}-control", f"{name}-status"])
        finally:
            admin.close()


@dataclass
class RealRun:
    """Jobs of a real run through the whole stack, submitted with the CLI."""

    done: str  #: completed, followed with ``submit --wait`` in a pseudo-terminal
    done_rc: int
    done_output: str  #: what that terminal showed (escape sequences removed)
    failed: str  #: image.no_face, followed with ``submit --wait`` through CliRunner
    failed_result: Result


@pytest.fixture(scope="package")
def real_run(cli_stack: CliStack) -> RealRun:
    cs = cli_stack
    done = f"{cs.topic}-done"
    rc, output = run_pty([str(BIN), "submit", "--image", str(cs.face), "--audio",
                          str(cs.speech), "--task-id", done, "--min-resolution", "128",
                          "--inference-steps", "4", "--seed", "3", "--wait"], cs.env)
    failed = f"{cs.topic}-noface"
    result = cs.invoke("submit", "--image", str(cs.wall), "--audio", str(cs.speech),
                       "--task-id", failed, "--tenant", "t-cli", "--min-resolution", "128",
                       "--wait", "--timeout", "120")
    return RealRun(done, rc, plain(output), failed, result)
