"""Waiting on a condition in tests, with the processes' log tails when it never comes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.1, logs: Path | None = None) -> Any:
    """Poll ``predicate`` every ``interval_s`` seconds until it returns something true
    (returned). After ``timeout_s`` seconds raise AssertionError naming ``what``, with the
    last 40 lines of each ``*.log`` under ``logs`` (Kafka client chatter left out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    tails = []
    for log in sorted(logs.glob("*.log")) if logs else []:
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if " kafka." not in line]
        tails.append(f"--- {log.name} ---\n" + "\n".join(lines[-40:]))
    raise AssertionError("\n".join([f"timed out after {timeout_s}s waiting for {what}",
                                    *tails]))
