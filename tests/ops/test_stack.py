"""ops/stack.py against real processes.

The main stack is already up (default settings); these tests never stop it. Anything
started here runs on free ports with its own state dir, and is stopped here.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest
import redis

from pipeline.settings import load
from tests.support.server import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNNING = re.compile(r"^(\w+)\s+running\s+pid (\d+)", re.M)


def stack(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "ops" / "stack.py"), *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # an exited orphan may wait a moment to be reaped


def running(output: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in RUNNING.findall(output)}


@pytest.fixture
def state_dir():
    # Not pytest's tmp_path: its root is 0700 and the postgres user must walk into it.
    path = Path(tempfile.mkdtemp(prefix="sonic-ops-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_status_reports_every_service_running():
    result = stack("status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(running(result.stdout)) == {"kafka", "postgres", "redis"}


def test_second_up_is_a_noop():
    before = running(stack("status").stdout)
    result = stack("up")
    assert result.returncode == 0, result.stderr
    for name, pid in before.items():
        assert f"{name}: already running (pid {pid})" in result.stdout
    assert "nothing to do" in result.stdout
    assert running(stack("status").stdout) == before


def test_port_taken_by_someone_else_is_one_clear_line(state_dir):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = stack("up", "--only", "redis", SONIC_STATE_DIR=str(state_dir),
                       SONIC_REDIS_PORT=str(port))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"redis: port {port} on 127.0.0.1 is in use by another process; "
        "stop it or set SONIC_REDIS_PORT"
    )
    assert not (state_dir / "run" / "redis.pid").exists()


def test_wrong_postgres_password_is_one_clear_line():
    secret = "not-the-password-4417"
    result = stack("up", "--only", "postgres", SONIC_PG_PASSWORD=secret)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(r"postgres: role \S+ exists with a different password; "
                        r"set SONIC_PG_PASSWORD to its password", lines[0])
    assert secret not in result.stdout + result.stderr


def test_isolated_redis_postgres_up_then_down_leaves_nothing(state_dir):
    env = {"SONIC_STATE_DIR": str(state_dir), "SONIC_REDIS_PORT": str(free_port()),
           "SONIC_PG_PORT": str(free_port())}
    only = ("--only", "redis,postgres")

    first = stack("up", *only, **env)
    assert first.returncode == 0, first.stdout + first.stderr
    status = stack("status", *only, **env)
    assert status.returncode == 0, status.stdout
    pids = running(status.stdout)
    assert set(pids) == {"redis", "postgres"}

    # Both answer, with the credentials the pipeline will use.
    settings = load(state_dir=state_dir, redis_port=int(env["SONIC_REDIS_PORT"]),
                    pg_port=int(env["SONIC_PG_PORT"]))
    with redis.Redis(host="127.0.0.1", port=settings.redis_port) as client:
        assert client.ping()
    psycopg2.connect(host="127.0.0.1", port=settings.pg_port, user=settings.pg_user,
                     password=settings.pg_password.get_secret_value(),
                     dbname=settings.pg_database).close()

    again = stack("up", *only, **env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert running(stack("status", *only, **env).stdout) == pids

    # The postmaster's children (checkpointer, walwriter...) must go with it.
    children = [int(p.name) for p in Path("/proc").glob("[0-9]*") if _ppid(p) == pids["postgres"]]
    assert children

    down = stack("down", *only, **env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [pid for pid in [*pids.values(), *children] if alive(pid)]
    stopped = stack("status", *only, **env)
    assert stopped.returncode == 1 and not running(stopped.stdout)
    assert "redis: not running" in stack("down", *only, **env).stdout


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        return -1
