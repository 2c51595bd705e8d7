"""The database engine on the real PostgreSQL: a pooled connection is pinged only after it
sat idle, a dead one is replaced at checkout, one that died within the idle limit fails
its statement once and the pool recovers; ``single_statements`` commits each statement
and hands back a transactional connection."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, exc, text

from pipeline.settings import Settings
from pipeline.state.db import make_db_engine, single_statements

pytestmark = pytest.mark.integration


def _engine(stack: Settings, idle_s: float) -> Engine:
    return make_db_engine(stack.model_copy(update={"pg_ping_idle_s": idle_s}), pool_size=1)


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Each ping's time (every engine's dialect class is patched)."""
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    seen: list[float] = []
    real = PGDialect_psycopg2.do_ping

    def counted(self: PGDialect_psycopg2, dbapi_connection: object) -> bool:
        seen.append(time.monotonic())
        return real(self, dbapi_connection)

    monkeypatch.setattr(PGDialect_psycopg2, "do_ping", counted)
    yield seen


def _backend_pid(db_engine: Engine) -> int:
    with db_engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(db_engine: Engine, pid: int) -> None:
    with make_db_engine(Settings(), pool_size=1).connect() as other:
        assert other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        other.commit()
    time.sleep(0.1)  # the backend is gone before the next use


def test_a_connection_used_within_the_idle_limit_is_not_pinged(stack: Settings,
                                                                pings: list[float]) -> None:
    db_engine = _engine(stack, 30.0)
    try:
        pids = {_backend_pid(db_engine) for _ in range(20)}
        assert len(pids) == 1  # the one pooled connection, reused
        assert pings == []
    finally:
        db_engine.dispose()


@pytest.mark.parametrize("idle_s", [0.0, 0.2])
def test_a_connection_idle_past_the_limit_is_pinged_and_a_dead_one_replaced(
        stack: Settings, pings: list[float], idle_s: float) -> None:
    db_engine = _engine(stack, idle_s)
    try:
        first = _backend_pid(db_engine)
        _terminate(db_engine, first)
        time.sleep(idle_s + 0.05)
        second = _backend_pid(db_engine)  # no error: the ping found it dead
        assert second != first
        assert len(pings) == 1
        # a pinged connection is handed out idle: a single-statement user can take it
        time.sleep(idle_s + 0.05)
        with single_statements(db_engine) as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == second
        assert len(pings) == 2
    finally:
        db_engine.dispose()


def test_a_connection_that_died_within_the_idle_limit_fails_once_then_the_pool_recovers(
        stack: Settings, pings: list[float]) -> None:
    db_engine = _engine(stack, 30.0)
    try:
        first = _backend_pid(db_engine)
        _terminate(db_engine, first)
        with pytest.raises(exc.OperationalError) as raised:
            _backend_pid(db_engine)
        assert raised.value.connection_invalidated
        assert _backend_pid(db_engine) != first
        assert pings == []
    finally:
        db_engine.dispose()


def test_single_statements_commit_each_and_give_back_a_transactional_connection(
        stack: Settings, db_engine: Engine) -> None:
    one = make_db_engine(stack, pool_size=1)
    table = f"single_statements_{int(time.time() * 1000)}"
    try:
        with one.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} (n int)"))
        with single_statements(one) as conn:
            conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
            # a statement that fails undoes itself only
            with pytest.raises(exc.DataError):  # division by zero, after the row of 2
                conn.execute(text(f"INSERT INTO {table} VALUES (2), (1 / 0)"))
            conn.execute(text(f"INSERT INTO {table} VALUES (3)"))
        with one.connect() as conn:  # the same pooled connection: transactional again
            conn.execute(text(f"INSERT INTO {table} VALUES (4)"))
            conn.rollback()
        with db_engine.connect() as conn:  # seen from another session: committed ones
            rows = conn.execute(text(f"SELECT n FROM {table} ORDER BY n")).scalars().all()
        assert rows == [1, 3]
    finally:
        with one.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        one.dispose()
