"""A pool of API keys shared by every worker through Redis: per-key moving-window limits, a
global cap on calls in flight, three strategies, cool-down on 429/5xx, disable on 401/403.

    pool = CredentialPool(client, keys, strategy="least_loaded", max_concurrent=50,
                          lease_s=660, cooldown_min_s=1, cooldown_max_s=300)
    got = pool.acquire()                     # Grant, or Refusal(reason, wait_s)
    ... call the service with got.key.secret ...
    pool.release(got, Outcome.COOL, retry_after_s=30)

Every decision is one Lua script (:mod:`.lua`) on Redis' clock, so workers on any host
agree and none takes a slot another took. A call's lease ends when it is released, or by
itself ``lease_s`` after it began (a worker that died mid-call gives its slot back).
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from .keys import KeySpec
from .lua import ACQUIRE, RELEASE

#: Default key prefix; the hash tag keeps every key of a pool in one cluster slot.
PREFIX = "sonic:remote:{pool}:"
#: A waiting job not refreshed for this long is left out of the snapshot (its worker died).
WAITING_STALE_S = 60.0
STRATEGIES = ("least_loaded", "round_robin", "weighted")


class Outcome(str, enum.Enum):
    OK = "ok"  #: a 2xx answer
    COOL = "cool"  #: 429, 5xx or no answer: the key cools down
    AUTH = "auth"  #: 401/403: the key is disabled until enabled again
    REJECTED = "rejected"  #: another 4xx: the request's fault, not the key's
    ABANDONED = "abandoned"  #: the job stopped before the answer (counted only)


@dataclass(frozen=True)
class Grant:
    """One call's slot: which key, the call's id, when it began (monotonic seconds)."""

    key: KeySpec
    call_id: str
    started: float


@dataclass(frozen=True)
class Refusal:
    """No slot now: ``reason`` (capacity, rate, cooling, disabled) and the seconds until
    one may free (0 when none will: every key is disabled)."""

    reason: str
    wait_s: float


class CredentialPool:
    """The keys ``keys`` under ``prefix`` in ``client``'s Redis (errors: ``redis.RedisError``)."""

    def __init__(self, client: redis.Redis, keys: list[KeySpec], *, strategy: str,
                 max_concurrent: int, lease_s: float, cooldown_min_s: float,
                 cooldown_max_s: float, prefix: str = PREFIX) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.client, self.keys, self.strategy, self.prefix = client, keys, strategy, prefix
        self.max_concurrent, self.lease_ms = int(max_concurrent), int(lease_s * 1000)
        self.cool_min_ms, self.cool_max_ms = int(cooldown_min_s * 1000), int(cooldown_max_s * 1000)
        self._by_id = {k.id: k for k in keys}
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._specs: list[object] = []
        for key in keys:
            self._specs += [key.id, key.weight, len(key.windows)]
            for window in key.windows:
                self._specs += [window.amount, window.span_ms]

    def acquire(self) -> Grant | Refusal:
        """Take a slot on the key the strategy picks, or say why none and for how long."""
        call_id = uuid.uuid4().hex
        took, what, wait_ms = self._acquire(args=[
            self.prefix, self.strategy, self.max_concurrent, self.lease_ms, call_id,
            len(self.keys), *self._specs])
        what = what.decode() if isinstance(what, bytes) else str(what)
        if took:
            return Grant(self._by_id[what], call_id, time.monotonic())
        return Refusal(what, int(wait_ms) / 1000)

    def release(self, grant: Grant, outcome: Outcome, *, retry_after_s: float = 0.0,
                reason: str = "") -> float:
        """End ``grant``'s call with ``outcome``; ``retry_after_s``: the service's own
        Retry-After; ``reason``: why a key is disabled. Returns the seconds the key still
        cools down (0 when it does not)."""
        cool_until, now = self._release(args=[
            self.prefix, grant.key.id, grant.call_id, outcome.value,
            int(max(0.0, retry_after_s) * 1000), self.cool_min_ms, self.cool_max_ms,
            reason or outcome.value])
        return max(0, int(cool_until) - int(now)) / 1000

    def enable(self, key_id: str) -> bool:
        """Clear a key's disable, cool-down and fault streak; False for an unknown id."""
        if key_id not in self._by_id:
            return False
        self.client.hdel(self._hash(key_id), "disabled", "disabled_at", "cool_until", "cool_ms")
        self.client.hset(self._hash(key_id), "streak", 0)
        return True

    def note_waiting(self, job: str, detail: dict[str, Any] | None) -> None:
        """Show ``job`` as waiting for a credential (``detail``), or no longer (None)."""
        if detail is None:
            self.client.hdel(self.prefix + "waiting", job)
        else:
            self.client.hset(self.prefix + "waiting", job,
                             json.dumps({**detail, "at": round(time.time(), 3)}))

    def snapshot(self) -> dict[str, Any]:
        """The pool as the CLI shows it: each key's id, state (``ready``, ``cooling``,
        ``disabled``), seconds of cool-down left, calls in flight and its counts; the
        calls in flight overall; the jobs waiting for a credential."""
        now_s, micros = self.client.time()
        now = now_s * 1000 + micros // 1000
        keys = []
        for key in self.keys:
            h = self._hash(key.id)
            raw = {k.decode(): v.decode() for k, v in self.client.hgetall(h).items()}
            cool_left = max(0, int(raw.get("cool_until") or 0) - now) / 1000
            state = "disabled" if raw.get("disabled") else "cooling" if cool_left else "ready"
            keys.append({
                "id": key.id, "state": state, "weight": key.weight, "rate": key.rate,
                "cooling_s": cool_left, "disabled": raw.get("disabled"),
                "in_flight": self.client.zcount(h + ":inflight", now, "+inf"),
                **{name: int(raw.get(name) or 0) for name in ("calls", "ok", "failed",
                                                               "rejected")},
                "last": raw.get("last")})
        waiting = []
        for job, value in self.client.hgetall(self.prefix + "waiting").items():
            detail = json.loads(value)
            if time.time() - float(detail.get("at", 0)) < WAITING_STALE_S:
                waiting.append({"job": job.decode(), **detail})
        return {"strategy": self.strategy, "max_concurrent": self.max_concurrent,
                "in_flight": self.client.zcount(self.prefix + "inflight", now, "+inf"),
                "keys": keys, "waiting": waiting}

    def _hash(self, key_id: str) -> str:
        return f"{self.prefix}key:{key_id}"
