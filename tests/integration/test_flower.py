"""Flower against the real broker: basic auth from settings, persistent state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from pipeline.settings import Settings
from tests.support.server import free_port

pytestmark = pytest.mark.integration


def test_flower_requires_auth_and_keeps_its_state(stack: Settings, tmp_path) -> None:
    port = free_port()
    env = dict(os.environ, SONIC_FLOWER_PORT=str(port), SONIC_STATE_DIR=str(tmp_path),
               SONIC_FLOWER_USER="ops", SONIC_FLOWER_PASSWORD="flower-test-pw")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "flower"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = requests.get(f"{base}/healthcheck", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "flower did not start"
                time.sleep(0.3)
        assert health.status_code == 200
        assert requests.get(f"{base}/workers", timeout=10).status_code == 401
        assert requests.get(f"{base}/workers", auth=("ops", "wrong"), timeout=10
                            ).status_code == 401
        assert requests.get(f"{base}/workers", auth=("ops", "flower-test-pw"), timeout=10
                            ).status_code == 200
        # The password is passed by environment, never on the command line.
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            assert b"flower-test-pw" not in fh.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert list(tmp_path.glob("flower.db*")), "persistent state was not saved"
