"""The session advisory lock on the real PostgreSQL: one holder at a time, given back on
drop, lost with its session (the next hold raises, a standby takes it)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from pipeline.state.advisory import SessionLock

pytestmark = pytest.mark.integration


def _pid(lock: SessionLock) -> int:
    assert lock.connection is not None
    return int(lock.connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_one_holder_at_a_time_and_the_callbacks_follow(db_engine: Engine, unique: str) -> None:
    seen: list[str] = []
    first = SessionLock(db_engine, f"test-lock:{unique}", on_take=lambda: seen.append("take"),
                        on_drop=lambda: seen.append("drop"))
    second = SessionLock(db_engine, f"test-lock:{unique}")
    other = SessionLock(db_engine, f"test-lock:{unique}-other")
    try:
        assert first.hold() and first.held
        assert first.hold()  # held: checked alive, not taken twice
        assert not second.hold() and not second.held and second.connection is None
        assert other.hold()  # another key is another lock
        assert seen == ["take"]
        first.drop()
        assert not first.held and seen == ["take", "drop"]
        first.drop()  # not held: nothing happens
        assert seen == ["take", "drop"]
        assert second.hold() and second.held
    finally:
        for lock in (first, second, other):
            lock.drop()


def test_a_lost_session_raises_at_the_next_hold_and_frees_the_lock(db_engine: Engine,
                                                                   unique: str) -> None:
    holder = SessionLock(db_engine, f"test-lock:{unique}")
    standby = SessionLock(db_engine, f"test-lock:{unique}")
    try:
        assert holder.hold()
        # The session is idle between two holds (autocommit: never idle in a transaction).
        with db_engine.connect() as conn:
            state = conn.execute(text("SELECT state FROM pg_stat_activity WHERE pid = :p"),
                                 {"p": _pid(holder)}).scalar_one()
            assert state == "idle"
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": _pid(holder)})
        with pytest.raises(OperationalError):
            holder.hold()
        holder.drop()  # a dead session: dropped without raising
        assert not holder.held
        assert standby.hold()
    finally:
        holder.drop()
        standby.drop()


def test_an_error_in_on_take_leaves_the_lock_held_for_the_caller_to_drop(
        db_engine: Engine, unique: str) -> None:
    def broken() -> None:
        raise RuntimeError("weights not stored")

    lock = SessionLock(db_engine, f"test-lock:{unique}", on_take=broken)
    other = SessionLock(db_engine, f"test-lock:{unique}")
    try:
        with pytest.raises(RuntimeError):
            lock.hold()
        assert lock.held and not other.hold()
        lock.drop()
        assert other.hold()
    finally:
        lock.drop()
        other.drop()
