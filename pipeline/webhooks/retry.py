"""When to try a callback again, and when to stop."""

from __future__ import annotations

import random
from datetime import datetime

#: Defaults for callbacks: first retry within 2 s, never more than 10 minutes apart.
BASE_S = 2.0
CAP_S = 600.0


def backoff_delay(attempt: int, base: float = BASE_S, cap: float = CAP_S,
                  rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    ``attempt`` counts from 1 (the delay after the first failure).
    """
    ceiling = min(cap, base * 2 ** max(0, min(attempt - 1, 62)))
    return (rng or random).uniform(0.0, ceiling)


def retry_delay(attempt: int, retry_after: float | None = None, base: float = BASE_S,
                cap: float = CAP_S, rng: random.Random | None = None) -> float:
    """The backoff delay, but never sooner than the receiver's Retry-After (capped)."""
    delay = backoff_delay(attempt, base, cap, rng)
    return min(cap, max(delay, retry_after or 0.0))


def should_give_up(first_attempt_at: datetime | float, now: datetime | float,
                   max_age_s: float) -> bool:
    """True once ``max_age_s`` has passed since the first attempt (both datetimes or both
    epoch seconds)."""
    if isinstance(first_attempt_at, datetime) and isinstance(now, datetime):
        elapsed = (now - first_attempt_at).total_seconds()
    elif isinstance(first_attempt_at, (int, float)) and isinstance(now, (int, float)):
        elapsed = float(now) - float(first_attempt_at)
    else:
        raise TypeError("first_attempt_at and now must both be datetimes or both numbers")
    return elapsed >= max_age_s
