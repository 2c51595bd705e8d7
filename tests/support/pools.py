"""Redis databases and metrics ports for the worker pools tests start, from one registry;
and the pools' processes themselves.

A worker pool consumes every stage queue of its Redis database: two live pools on one
database take each other's jobs. A bridge serves metrics on ``SONIC_METRICS_PORT`` and the
gpu, cpu and io pools on the next three ports: two live stacks on one block fail to
start. A fixture that starts pools (or anything else that needs them) takes both here for
as long as they live, and gives them back after:

    with pools.lease("cli", settings) as lease:   # lease.redis_db, lease.metrics_port
        ...                                       # (a block of METRICS_BLOCK ports)

Databases come from :data:`POOL_DBS`: the local Redis's 16 less :data:`FIXED_DBS`, the
ones tests that start no pool use by a number of their own (each named with its users).
The database is flushed when leased and when given back. Ports: a block of
:data:`METRICS_BLOCK` consecutive ports below the ephemeral range (no client socket of
this machine takes them), none leased to another live fixture, each free when leased.
Raises AssertionError, naming the holders, when none is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
#: Databases used by number by tests that start no pool (not leased here).
FIXED_DBS = {
    0: "the settings' default (tests on the stack's own settings)",
    3: "tests/pipeline/webhooks (FLOW_REDIS_DB)",
    6: "tests/pipeline/test_chains.py",
    7: "tests/integration/test_celery_worker.py",
    8: "tests/bridge cases", 9: "tests/bridge cases, tests/pipeline/test_credentials.py",
    10: "tests/bridge cases", 11: "tests/bridge cases", 12: "tests/bridge cases",
    13: "tests/bridge cases, tests/pipeline/status, test_reconcile_stalled.py",
    15: "tests/bridge cases, tests/integration/test_kafka_sasl_ssl.py",
}
#: The databases leased to pools, lowest first.
POOL_DBS = tuple(db for db in range(16) if db not in FIXED_DBS)
#: Ports of one lease: the bridge's, then the gpu, cpu and io pools'.
METRICS_BLOCK = 4
#: Where the blocks are taken from (below the ephemeral range, 32768 and up).
METRICS_PORTS = range(29100, 30000, 10)

_dbs: dict[int, str] = {}  # leased database -> owner
_ports: dict[int, str] = {}  # first port of a leased block -> owner


@dataclass(frozen=True)
class Lease:
    owner: str
    redis_db: int
    metrics_port: int  #: the first of METRICS_BLOCK ports


def take_redis_db(owner: str) -> int:
    """The lowest pool database no live lease holds (not flushed: see :func:`lease`)."""
    for db in POOL_DBS:
        if db not in _dbs:
            _dbs[db] = owner
            return db
    raise AssertionError(f"no Redis database left for {owner}: held by {_dbs}")


def take_metrics_ports(owner: str) -> int:
    """The first of :data:`METRICS_BLOCK` consecutive ports, free now and not leased."""
    for base in METRICS_PORTS:
        if base not in _ports and bindable(base, METRICS_BLOCK):
            _ports[base] = owner
            return base
    raise AssertionError(f"no metrics ports left for {owner}: held by {_ports}")


def release(owner: str) -> None:
    """Return every database and port block ``owner`` holds to the registry."""
    for held in (_dbs, _ports):
        for key in [k for k, v in held.items() if v == owner]:
            del held[key]


@contextmanager
def lease(owner: str, settings: Any) -> Iterator[Lease]:
    """A database (flushed before and after, on ``settings``' Redis) and a block of
    metrics ports for ``owner``, held until the block ends."""
    if owner in (*_dbs.values(), *_ports.values()):
        raise AssertionError(f"{owner} holds a lease already")
    try:
        taken = Lease(owner, take_redis_db(owner), take_metrics_ports(owner))
        flush(settings, taken.redis_db)
        try:
            yield taken
        finally:
            flush(settings, taken.redis_db)
    finally:
        release(owner)


def flush(settings: Any, db: int) -> None:
    """Empty database ``db`` of ``settings``' Redis."""
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port, db=db,
                         password=settings.redis_password.get_secret_value()
                         if settings.redis_password else None)
    try:
        client.flushdb()
    finally:
        client.close()


def bindable(base: int, count: int) -> bool:
    """Whether loopback ports ``base`` .. ``base + count - 1`` can all be bound now."""
    socks = []
    try:
        for port in range(base, base + count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in socks:
            sock.close()


def env_of(overrides: Mapping[str, Any]) -> dict[str, str]:
    """This process's environment without SONIC_*, plus ``overrides`` as SONIC_* variables
    (lists joined with commas, booleans ``true``/``false``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIC_")}
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"SONIC_{key.upper()}"] = str(value)
    return env


def spawn(argv: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``argv`` in the repository root, output appended to ``log``, in a session of its own
    (so :func:`stop` ends a pool's parent and children at once)."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=dict(env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = 20) -> None:
    """SIGTERM every live process group of ``procs`` at once, then wait for each (SIGKILL
    after ``timeout_s``)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
