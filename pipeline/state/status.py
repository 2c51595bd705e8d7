"""Task status as a string enum with an order: a late event never moves a task backwards.

    received -> waiting -> queued -> running -> completed | failed | rejected | cancelled
                                                  | expired

``rejected`` is for messages that never became jobs (bad input at the door); ``failed`` for
jobs that ran and failed. The five final states share the highest rank: once final, a task
stays final.
"""

from __future__ import annotations

import enum


class Status(str, enum.Enum):
    RECEIVED = "received"  #: admitted to Postgres, no chain published yet
    WAITING = "waiting"  #: held back for ordering_key / depends_on
    QUEUED = "queued"  #: its chain is in Celery
    RUNNING = "running"  #: a stage has started
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  #: past its deadline before it started (never dispatched nor run)

    @property
    def final(self) -> bool:
        return self in FINAL


RANK: dict[Status, int] = {
    Status.RECEIVED: 10,
    Status.WAITING: 20,
    Status.QUEUED: 30,
    Status.RUNNING: 40,
    Status.COMPLETED: 100,
    Status.FAILED: 100,
    Status.REJECTED: 100,
    Status.CANCELLED: 100,
    Status.EXPIRED: 100,
}

FINAL: frozenset[Status] = frozenset(s for s, r in RANK.items() if r == 100)


def rank_case(column: str = "status") -> str:
    """SQL giving the rank of a status column, for forward-only updates."""
    whens = " ".join(f"WHEN '{s.value}' THEN {r}" for s, r in RANK.items())
    return f"(CASE {column} {whens} ELSE 0 END)"
