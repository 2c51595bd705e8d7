"""Outbound rate limit per callback destination: at most N requests in any window.

Built on ``limits``' moving window: a log of the last N send times of each destination,
kept by a Lua script in Redis, so every io worker process draws on one budget per
destination. A send is allowed only when the N-th latest send is older than the window,
so no window of that length ever holds more than N sends (stricter than a token bucket,
which lets a full bucket burst on top of the refill). A refused send learns when the
oldest of those N leaves the window: how long it has to wait.

    rate = HostRateLimit(storage, "20/second")
    wait = rate.take("https://hooks.example.com:443")   # 0.0: go; else seconds to wait
"""

from __future__ import annotations

import time
from collections.abc import Callable

from limits import RateLimitItem, parse
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter

#: The shortest wait a refused send is given (the window's edge may be a hair away).
MIN_WAIT_S = 0.01


def parse_rate(rate: str) -> RateLimitItem:
    """``"20/second"``, ``"100 per minute"``... (``limits`` notation); ValueError if not."""
    return parse(rate)


class HostRateLimit:
    """At most ``rate`` sends per destination, counted in ``storage`` (Redis in workers,
    memory in unit tests). ``clock``: epoch seconds, as the storage's timestamps."""

    def __init__(self, storage: Storage, rate: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.item = parse_rate(rate)
        self._limiter = MovingWindowRateLimiter(storage)
        self._clock = clock

    @property
    def window_s(self) -> float:
        """Length of the window in seconds (1 for ``N/second``)."""
        return float(self.item.get_expiry())

    def take(self, host: str) -> float:
        """Take a slot for one send to ``host``: 0.0 when taken, else the seconds until
        one frees (nothing taken). Raises the storage's errors (``redis.RedisError``)."""
        if self._limiter.hit(self.item, host):
            return 0.0
        reset_at = self._limiter.get_window_stats(self.item, host).reset_time
        return max(MIN_WAIT_S, reset_at - self._clock())
