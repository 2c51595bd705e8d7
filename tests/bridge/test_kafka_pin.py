"""The kafka-python pin: the bridge uses that release's private names and refuses others."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import kafka
import pytest

from bridge import kafka_pin
from bridge.consumer import _finish_joins
from pipeline.errors import ConfigError

OTHERS = ("3.0.11", "3.0.13", "3.1.0", "2.0.2", "4.0.0", "3.0.12.post1")


def test_the_installed_client_is_the_pinned_one() -> None:
    assert kafka.__version__ == kafka_pin.PINNED
    kafka_pin.check_client()


@pytest.mark.parametrize("other", OTHERS)
def test_any_other_version_is_refused_naming_both(other: str) -> None:
    with pytest.raises(ConfigError) as caught:
        kafka_pin.check_client(other)
    assert caught.value.code == "config.invalid"
    assert kafka_pin.PINNED in caught.value.message and other in caught.value.message


def _consumer(**coordinator: object) -> SimpleNamespace:
    return SimpleNamespace(_coordinator=SimpleNamespace(**coordinator))


@pytest.mark.parametrize("consumer", [
    SimpleNamespace(),  # no _coordinator at all
    _consumer(need_rejoin=lambda: False),  # no _join_task
    _consumer(_join_task=None),  # no need_rejoin
], ids=["no-coordinator", "no-join-task", "no-need-rejoin"])
def test_a_client_without_the_private_names_fails_loudly(consumer: SimpleNamespace) -> None:
    with pytest.raises(ConfigError) as caught:
        _finish_joins(consumer)  # type: ignore[arg-type]
    assert "bridge/consumer.py" in caught.value.message


def test_an_unfinished_join_round_counts_as_a_rejoin() -> None:
    consumer = _consumer(_join_task=None, need_rejoin=lambda: False)
    _finish_joins(consumer)  # type: ignore[arg-type]
    assert consumer._coordinator.need_rejoin() is False
    consumer._coordinator._join_task = object()
    assert consumer._coordinator.need_rejoin() is True


@pytest.mark.parametrize("other", ["3.0.13", "3.1.0"])
def test_the_bridge_refuses_to_start_on_another_version(other: str) -> None:
    """Checked before any service is reached: PostgreSQL on port 1 would be exit 4."""
    code = ("import sys, kafka\n"
            f"kafka.__version__ = {other!r}\n"
            "from bridge.main import main\n"
            "sys.exit(main())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, SONIC_PG_PORT="1"))
    assert proc.returncode == 3, proc.stderr
    assert f"kafka-python {other} is installed" in proc.stderr
