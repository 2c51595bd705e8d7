"""Where the bridge's admission time goes, per phase, summed over its life.

    with PHASES.timed("decode"): ...        wall seconds of one phase of one batch
    PHASES.count(n)                          records polled
    PHASES.line()                            "phases (us/job over N jobs): poll 12.0, ..."

The loop's thread times ``poll`` (polls that returned records), ``decode`` (decode and
validate) and ``kafka_commit``; the batch thread ``copy`` (COPY and the INSERT),
``settle`` and ``pg_commit``. The two threads overlap, so the phases add up to more than
the elapsed time. The bridge logs the line when it stops (the admission benchmark prints
it); the cost is a clock read around each phase of a batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The phases, in the order of a batch's way through the bridge.
NAMES = ("poll", "decode", "copy", "settle", "pg_commit", "kafka_commit")


class Phases:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(NAMES, 0.0)
        self.records = 0

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``name`` (one of :data:`NAMES`)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def count(self, records: int) -> None:
        self.records += records

    def line(self) -> str:
        """Microseconds per record of each phase."""
        per = 1e6 / max(1, self.records)
        return (f"phases (us/job over {self.records} jobs): "
                + ", ".join(f"{name} {self.seconds[name] * per:.1f}" for name in NAMES))


#: The bridge process's phases (one bridge loop per process).
PHASES = Phases()
