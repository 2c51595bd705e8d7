"""Backpressure as a typed signal: how many records the next poll may take, or pause.

The backlog is the number of this topic's admitted jobs not dispatched yet (runnable and
waiting: Postgres is the truth, shared by every bridge, read from the per-tenant counts).
It is re-counted every ``refresh_s``; what this bridge admitted since the last count is
added meanwhile. Above its cap the partitions pause and the rest waits in Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Flow:
    """The loop's instruction: pause every partition, or poll at most ``max_records``."""

    paused: bool
    max_records: int
    backlog: int


class Backlog:
    def __init__(self, count: Callable[[], int], refresh_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._count = count
        self._refresh_s = refresh_s
        self._clock = clock
        self._value = 0
        self._at = float("-inf")

    def value(self) -> int:
        now = self._clock()
        if now - self._at >= self._refresh_s:
            self._value = self._count()
            self._at = now
        return self._value

    def add(self, admitted: int) -> None:
        self._value += admitted


class Backpressure:
    """Pause at ``high`` jobs in the backlog, resume below ``low``; cap polls at the
    headroom."""

    def __init__(self, high: int, low: int, batch_max: int) -> None:
        if not 0 <= low < high:
            raise ValueError("backpressure needs 0 <= low < high")
        self.high, self.low, self.batch_max = high, low, batch_max
        self.paused = False

    def flow(self, backlog: int) -> Flow:
        if self.paused and backlog < self.low:
            self.paused = False
        elif not self.paused and backlog >= self.high:
            self.paused = True
        headroom = max(1, min(self.batch_max, self.high - backlog))
        return Flow(self.paused, headroom, backlog)
