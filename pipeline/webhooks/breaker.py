"""A circuit breaker per callback destination, its state shared by every io worker.

    closed --``failures`` consecutive failures--> open --``open_s`` passed--> half-open
    half-open: at most ``trials`` deliveries per opening go through (the others wait);
               the first success closes it, a failure opens it again for ``open_s``

pybreaker's ``CircuitBreaker`` runs the state machine; its ``CircuitRedisStorage`` keeps
state, consecutive-failure count and opening time under
``sonic:webhooks:breaker:<destination>:pybreaker:*``, so a failure one worker sees counts
for all of them. The opening time is stored in whole seconds: a breaker may half-open up
to a second early.

Only a sign that the receiver is down counts as a failure: a timeout, a refused, reset or
failed connection (TLS and DNS included), 429 or a 5xx. Any other answer (2xx, 3xx, 4xx,
408, 425) shows the receiver up and counts as a success.

The half-open bound is ours, on ``limits``: a count of trials keyed by the opening time,
over a window of about two attempt deadlines (a trial whose worker died frees its place).
Without it, every delivery that the open breaker delayed would come back at the same
moment and probe the dead receiver together, filling the io pool with timeouts.

pybreaker holds a lock around each call, so breakers are kept per thread (a thread pool
would otherwise send to one host one request at a time).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from limits import RateLimitItemPerSecond
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter
from pybreaker import (STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker,
                       CircuitBreakerError, CircuitBreakerStorage)

from pipeline.errors import CallbackRetry

T = TypeVar("T")

#: The value of each state on the breaker-state gauge.
STATE_VALUES = {STATE_CLOSED: 0, STATE_HALF_OPEN: 1, STATE_OPEN: 2}
#: Shortest wait given to a delivery the breaker refuses.
MIN_WAIT_S = 0.05


def counts_as_failure(exc: BaseException) -> bool:
    """True for what shows the receiver down: a ``CallbackRetry`` without a status
    (timeout, connection refused/reset, TLS, DNS) or with 429 or 5xx."""
    if not isinstance(exc, CallbackRetry):
        return False
    status = exc.detail.get("status_code")
    return status is None or status == 429 or status >= 500


class Refused(Exception):
    """The breaker let no request through; ``wait_s``: when to come back."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"circuit open, retry in {wait_s:.2f} s")
        self.wait_s = wait_s


class HostBreakers:
    """One breaker per destination. ``storage_for(host)`` gives the pybreaker storage of a
    destination (Redis in workers); ``trial_storage`` counts half-open trials (``limits``);
    ``trial_window_s``: how long a trial's place is held (about two attempt deadlines).
    ``clock``: epoch seconds, used to tell how long an open breaker stays open."""

    def __init__(self, storage_for: Callable[[str], CircuitBreakerStorage],
                 trial_storage: Storage, *, failures: int, open_s: float, trials: int,
                 trial_window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.failures, self.open_s, self.trials = failures, open_s, trials
        self._storage_for = storage_for
        self._trials = MovingWindowRateLimiter(trial_storage)
        self._trial_item = RateLimitItemPerSecond(trials, max(1, math.ceil(trial_window_s)))
        self._clock = clock
        self._local = threading.local()

    def _pair(self, host: str) -> tuple[CircuitBreaker, CircuitBreakerStorage]:
        pairs: dict[str, Any] = self._local.__dict__.setdefault("pairs", {})
        if host not in pairs:
            storage = self._storage_for(host)
            pairs[host] = (CircuitBreaker(
                fail_max=self.failures, reset_timeout=self.open_s,
                exclude=[lambda exc: not counts_as_failure(exc)], state_storage=storage,
                name=host, throw_new_error_on_trip=False), storage)
        return pairs[host]

    def _breaker(self, host: str) -> CircuitBreaker:
        return self._pair(host)[0]

    def _opened_at(self, host: str) -> float:
        """When the breaker last opened (epoch seconds; 0.0 if never)."""
        opened = self._pair(host)[1].opened_at
        return opened.timestamp() if opened is not None else 0.0

    def state(self, host: str) -> str:
        """``closed``, ``open`` or ``half-open``, as stored."""
        return self._breaker(host).current_state

    def open_left(self, host: str) -> float:
        """Seconds an open breaker stays open (0.0 when closed, half-open or past due)."""
        breaker = self._breaker(host)
        if breaker.current_state != STATE_OPEN:
            return 0.0
        return max(0.0, self._opened_at(host) + self.open_s - self._clock())

    def admit(self, host: str) -> float:
        """0.0 when a request to ``host`` may go now (a trial place taken if half-open,
        and the breaker then half-opened), else seconds to wait."""
        breaker = self._breaker(host)
        state = breaker.current_state
        if state == STATE_CLOSED:
            return 0.0
        opened = self._opened_at(host)
        if state == STATE_OPEN:
            left = opened + self.open_s - self._clock()
            if left > 0:
                return max(MIN_WAIT_S, left)
        opening = f"{opened:.3f}"
        if not self._trials.hit(self._trial_item, host, opening):
            stats = self._trials.get_window_stats(self._trial_item, host, opening)
            return max(MIN_WAIT_S, stats.reset_time - self._clock())
        if state == STATE_OPEN:
            breaker.half_open()
        return 0.0

    def call(self, host: str, fn: Callable[[], T]) -> T:
        """``fn()`` through the breaker of ``host``: its failures and successes counted,
        its exceptions raised as they are. Raises :class:`Refused` when the breaker is
        open at the time of the call (opened by another worker since ``admit``)."""
        breaker = self._breaker(host)
        try:
            return breaker.call(fn)
        except CircuitBreakerError:
            raise Refused(max(MIN_WAIT_S, self.open_left(host))) from None
