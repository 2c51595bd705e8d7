"""Every entry point starts: ``python -m`` of each, the console script, the ops scripts and
``celery -A pipeline``. None of these needs a running service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, **env))


@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "pipeline.cli", "--help"],
    [str(BIN / "sonic-pipeline"), "--help"],
])
def test_the_cli_prints_its_verbs(argv: list[str]) -> None:
    proc = run(*argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: sonic-pipeline")
    for verb in ("settings", "db", "worker", "flower", "bridge", "submit", "show",
                 "housekeeping"):
        assert verb in proc.stdout


@pytest.mark.parametrize(("argv", "name"), [
    ([sys.executable, "-m", "bridge"], "bridge"),
    ([sys.executable, "-m", "pipeline.cli", "bridge"], "sonic-pipeline"),
])
def test_the_bridge_entry_points_read_the_settings_first(argv: list[str], name: str) -> None:
    """A setting that does not parse stops either bridge entry point at once with exit 3,
    before it reaches for any service."""
    proc = run(*argv, SONIC_PG_PORT="not-a-port")
    assert proc.returncode == 3, proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert line.startswith(f"{name}: config.invalid: SONIC_PG_PORT")


def test_celery_finds_the_app_in_the_pipeline_package() -> None:
    proc = run(sys.executable, "-m", "celery", "-A", "pipeline", "report")
    assert proc.returncode == 0, proc.stderr
    assert "task_default_queue: 'default'" in proc.stdout
    assert "sonic.inference" in proc.stdout  # the routes come from our configuration


@pytest.mark.parametrize("script", ["ops/stack.py", "ops/s3.py"])
def test_the_ops_scripts_print_their_usage(script: str) -> None:
    proc = run(sys.executable, script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {script}")
