"""How long a start waits for Kafka (``SONIC_KAFKA_BOOTSTRAP_TIMEOUT_S``), on the real
PostgreSQL and Redis: the bridge and the CLI give up after the setting's seconds, not
kafka-python's 30, with one ``service.unavailable`` line and exit 4; a bad value is
``config.invalid``, exit 3."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung broker, a wrong service)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _timed(argv: list[str], **env: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    began = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, SONIC_METRICS_PORT="0", **env),
                          capture_output=True, text=True, timeout=90)
    return time.monotonic() - began, done


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("where", ["closed", "silent"])
def test_the_bridge_waits_for_kafka_as_long_as_the_setting_says(
        stack: Settings, silent_broker: str, where: str) -> None:
    bootstrap = "127.0.0.1:1" if where == "closed" else silent_broker
    bridge = [sys.executable, "-m", "bridge"]
    short, quick = _timed(bridge, SONIC_KAFKA_BOOTSTRAP=bootstrap,
                          SONIC_KAFKA_BOOTSTRAP_TIMEOUT_S="1")
    long, slow = _timed(bridge, SONIC_KAFKA_BOOTSTRAP=bootstrap,
                        SONIC_KAFKA_BOOTSTRAP_TIMEOUT_S="6")
    for done in (quick, slow):
        assert done.returncode == 4, done.stderr
        assert _one_line(done).startswith("bridge: service.unavailable: kafka: cannot connect")
    assert long - short >= 3, (short, long)  # the setting (5 s apart), not a fixed wait
    assert short < 15, short  # start-up (imports, PostgreSQL, Redis) plus one second


def test_the_cli_gives_up_on_a_silent_broker_after_the_setting(
        stack: Settings, silent_broker: str) -> None:
    took, done = _timed([sys.executable, "-m", "pipeline.cli", "topics", "create"],
                        SONIC_KAFKA_BOOTSTRAP=silent_broker, SONIC_KAFKA_BOOTSTRAP_TIMEOUT_S="1")
    assert done.returncode == 4, done.stderr
    assert _one_line(done).startswith("sonic-pipeline: service.unavailable: kafka")
    assert took < 12, took


@pytest.mark.parametrize("value", ["0", "-1", "soon", "301"])
def test_a_bad_bootstrap_timeout_is_a_configuration_error(value: str) -> None:
    took, done = _timed([sys.executable, "-m", "bridge"], SONIC_KAFKA_BOOTSTRAP_TIMEOUT_S=value)
    assert done.returncode == 3, done.stderr
    line = _one_line(done)
    assert "config.invalid" in line and "SONIC_KAFKA_BOOTSTRAP_TIMEOUT_S" in line, line
