"""The remote engine's pool of API keys, shared by every worker in Redis.

    pool = pool_for(settings)        # this process's pool, on the broker's Redis
    got = pool.acquire()             # Grant(key, call_id, started) or Refusal(reason, wait_s)
    pool.release(got, Outcome.OK)

Keys and their limits: :mod:`.keys`; the decisions (one Lua script each): :mod:`.lua`;
the pool: :mod:`.pool`. Strategies: ``least_loaded`` (fewest calls in flight, then the
least used window), ``round_robin`` (the next usable key in turn) and ``weighted``
(smooth weighted round robin: each key's share is its weight).
"""

from __future__ import annotations


import redis

from pipeline.errors import ConfigError
from pipeline.per_process import PerProcess
from pipeline.settings import Settings

from .keys import KeySpec, Window, key_id, parse_keys
from .pool import PREFIX, STRATEGIES, CredentialPool, Grant, Outcome, Refusal

__all__ = ["CredentialPool", "Grant", "KeySpec", "Outcome", "PREFIX", "Refusal", "STRATEGIES",
           "Window", "build_pool", "key_id", "parse_keys", "pool_for"]

#: Socket timeouts of the pool's Redis client (seconds): a hung Redis never holds a worker.
REDIS_TIMEOUT_S = 2.0

_pools: PerProcess[CredentialPool] = PerProcess()


def build_pool(settings: Settings, client: redis.Redis | None = None,
               prefix: str = PREFIX) -> CredentialPool:
    """The pool ``settings`` describe, on ``client`` (default: the broker's Redis).
    Raises ``ConfigError`` when ``SONIC_REMOTE_KEYS`` holds no key or does not parse."""
    keys = parse_keys(settings.remote_keys, settings.remote_rate)
    if not keys:
        raise ConfigError("the remote engine needs SONIC_REMOTE_KEYS (one API key at least)")
    if client is None:
        client = redis.Redis.from_url(settings.broker_url, socket_timeout=REDIS_TIMEOUT_S,
                                      socket_connect_timeout=REDIS_TIMEOUT_S)
    return CredentialPool(
        client, keys, strategy=settings.remote_strategy,
        max_concurrent=settings.remote_max_concurrent,
        # A call's slot outlives its deadline a little: a dead worker's comes back by itself.
        lease_s=settings.remote_timeout_s + 60,
        cooldown_min_s=settings.remote_cooldown_min_s,
        cooldown_max_s=max(settings.remote_cooldown_min_s, settings.remote_cooldown_max_s),
        prefix=prefix)


def pool_for(settings: Settings) -> CredentialPool:
    """This process's pool for ``settings`` (a forked child builds its own client)."""
    secret = settings.remote_keys.get_secret_value() if settings.remote_keys else ""
    key = (settings.broker_url, hash(secret), settings.remote_rate,
           settings.remote_strategy, settings.remote_max_concurrent,
           settings.remote_cooldown_min_s, settings.remote_cooldown_max_s,
           settings.remote_timeout_s)
    return _pools.get(key, lambda: build_pool(settings))
