"""Flow control of callbacks per destination: the breaker, then the rate limit, then the POST.

    flow = flow_for(settings)                         # one per process; state in Redis
    host = destination(check_callback_url(url, settings))
    result = flow.send(host, lambda: deliver(...))    # or CallbackPaused(reason, delay_s)

A destination is a scheme, host and port. A delivery the flow holds back makes no
request: it raises :class:`~pipeline.errors.CallbackPaused` with ``reason``
``breaker_open`` (delay: the open time left, or until the half-open trial has had its
answer) or ``rate_limited`` (delay: until the window frees a slot), plus a little jitter so
deliveries held back together do not all come back at the same moment. The callback
stage turns that into a retry with that delay; nothing is dropped.

Keys live in the broker's Redis under ``sonic:webhooks:`` (``rate:``, ``trial:``,
``breaker:``). When Redis cannot be reached the flow steps aside and the delivery goes
ahead unguarded: the breaker exists to protect the io pool, not to stop callbacks.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import TypeVar

import redis
from limits.storage import RedisStorage
from pybreaker import STATE_CLOSED, CircuitRedisStorage

from pipeline import metrics
from pipeline.errors import CallbackPaused
from pipeline.inputs.urls import Ref
from pipeline.per_process import PerProcess
from pipeline.settings import Settings

from .breaker import STATE_VALUES, HostBreakers, Refused
from .ratelimit import HostRateLimit

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Every key of the callbacks' flow control starts with this.
PREFIX = "sonic:webhooks:"
#: Socket timeouts of the flow's Redis client (seconds): a hung Redis never holds a worker.
REDIS_TIMEOUT_S = 1.0
#: Jitter added to a breaker's wait, as a share of it.
BREAKER_JITTER = 0.1


def destination(ref: Ref) -> str:
    """The key of a checked callback URL: ``scheme://host:port`` (IPv6 in brackets)."""
    host = f"[{ref.host}]" if ":" in ref.host else ref.host
    return f"{ref.scheme}://{host}:{ref.port}"


class FlowControl:
    """The breaker and the rate limit of every destination, in front of each delivery."""

    def __init__(self, breakers: HostBreakers, rate: HostRateLimit, *,
                 attempt_s: float, rng: random.Random | None = None) -> None:
        self.breakers, self.rate = breakers, rate
        #: An attempt's deadline: a half-open trial has its answer within it.
        self.attempt_s = attempt_s
        self._rng = rng or random.Random()

    def send(self, host: str, fn: Callable[[], T]) -> T:
        """``fn()`` (one delivery to ``host``) if the breaker and the rate limit allow it.

        Raises ``CallbackPaused`` (no request made) or whatever ``fn`` raises; ``fn``'s
        timeouts, connection errors, 429 and 5xx count against the breaker.
        """
        try:
            wait = self.breakers.open_left(host)
            if wait > 0:
                raise self._paused(host, "breaker_open", wait, wait * BREAKER_JITTER)
            wait = self.rate.take(host)
            if wait > 0:
                raise self._paused(host, "rate_limited", wait, self.rate.window_s)
            wait = self.breakers.admit(host)
            if wait > 0:  # half-open: the trial places of this opening are taken
                wait = min(wait, self.attempt_s)
                raise self._paused(host, "breaker_open", wait, wait * BREAKER_JITTER)
        except redis.RedisError as exc:
            log.warning("callback flow control unavailable (%s); %s goes unguarded",
                        exc, host)
            return fn()
        try:
            return self.breakers.call(host, fn)
        except Refused as exc:  # another worker opened it since admit(): nothing was sent
            raise self._paused(host, "breaker_open", exc.wait_s,
                               exc.wait_s * BREAKER_JITTER) from None
        finally:
            self._show(host)

    def _paused(self, host: str, reason: str, wait: float, spread: float) -> CallbackPaused:
        delay = wait + self._rng.uniform(0.0, spread)
        metrics.count_paused(host, reason)
        self._show(host)
        return CallbackPaused(f"callback to {host} delayed {delay:.2f} s: {reason}",
                              reason=reason, host=host, delay_s=round(delay, 3))

    def _show(self, host: str) -> None:
        try:
            metrics.set_breaker_state(host, STATE_VALUES.get(self.breakers.state(host), 0))
        except redis.RedisError:
            pass  # the gauge keeps its last value


_flows: PerProcess[FlowControl] = PerProcess()


def flow_for(settings: Settings) -> FlowControl:
    """This process's flow control for ``settings`` (built once; a forked child builds
    its own, never reusing its parent's Redis connections)."""
    key = (settings.broker_url, settings.webhook_rate, settings.webhook_breaker_failures,
           settings.webhook_breaker_open_s, settings.webhook_breaker_trials,
           settings.webhook_timeout_s)
    return _flows.get(key, lambda: build(settings))


def build(settings: Settings) -> FlowControl:
    """Flow control on the broker's Redis, as configured by ``settings``."""
    url = settings.broker_url
    pool = redis.ConnectionPool.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                         socket_connect_timeout=REDIS_TIMEOUT_S)
    client = redis.Redis(connection_pool=pool)

    def storage_for(host: str) -> CircuitRedisStorage:
        return CircuitRedisStorage(STATE_CLOSED, client, namespace=f"{PREFIX}breaker:{host}")

    breakers = HostBreakers(
        storage_for, RedisStorage(url, connection_pool=pool, key_prefix=f"{PREFIX}trial"),
        failures=settings.webhook_breaker_failures, open_s=settings.webhook_breaker_open_s,
        trials=settings.webhook_breaker_trials,
        trial_window_s=2 * math.ceil(settings.webhook_timeout_s) + 1)
    rate = HostRateLimit(RedisStorage(url, connection_pool=pool, key_prefix=f"{PREFIX}rate"),
                         settings.webhook_rate)
    return FlowControl(breakers, rate, attempt_s=settings.webhook_timeout_s)
