"""Database engine (``db_engine``) and sessions, built from settings at an entry point.

A pooled connection is pinged (``SELECT 1``) before use only when it sat idle in the pool
for ``settings.pg_ping_idle_s`` or longer (SQLAlchemy's ``pool_pre_ping`` pings at every
checkout: a round trip per transaction, a sixth of a stage's hop here). The pool hands
out the most recently used connection first (LIFO), so a busy process keeps using warm
connections and skips the ping. A connection that broke within the idle limit (the server
restarted less than that ago) fails its statement with a disconnect error; SQLAlchemy then
drops every pooled connection, and the caller's database-error handling (a stage's retry,
a loop's backoff) runs once, as it does for a server that goes away mid-transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc

from pipeline.settings import Settings


def make_db_engine(settings: Settings, **kwargs: object) -> Engine:
    """One pooled SQLAlchemy engine per process; a connection idle for
    ``settings.pg_ping_idle_s`` is pinged before use, so Postgres restarts are survived."""
    options: dict[str, object] = {
        "pool_size": settings.pg_pool_size,
        "pool_use_lifo": True,
        "connect_args": {"connect_timeout": 5, "application_name": "sonic-pipeline"},
        "hide_parameters": True,
    }
    options.update(kwargs)
    # ``pool_size=None`` drops the option (NullPool, used by migrations, takes none).
    options = {key: value for key, value in options.items() if value is not None}
    if "poolclass" in options:  # a pool of its own (NullPool) takes no LIFO option
        options.pop("pool_use_lifo")
    db_engine = create_engine(settings.database_url, **options)
    ping_when_idle(db_engine, settings.pg_ping_idle_s)
    return db_engine


def ping_when_idle(db_engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection at checkout when it was checked in ``idle_s`` seconds ago
    or more (``idle_s`` 0: at every checkout). A failed ping discards the connection and
    the pool tries another (SQLAlchemy's ``DisconnectionError`` contract, pool events)."""

    @event.listens_for(db_engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(db_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("checked_in_at")
        if since is None or time.monotonic() - since < idle_s:
            return  # new (just connected), or used a moment ago
        try:
            alive = db_engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any failure: a dead connection
            raise exc.DisconnectionError(f"ping failed: {error}") from error
        if not alive:
            raise exc.DisconnectionError("ping failed")


@contextmanager
def single_statements(db_engine: Engine) -> Iterator[Connection]:
    """A connection on which each statement commits on its own (autocommit).

    For a write that is one statement (a data-modifying ``WITH`` included: it is atomic)
    this saves the ``BEGIN`` and ``COMMIT`` round trips; statements run on it are not
    atomic together. The flag is psycopg2's own (``connection.autocommit``, set on the
    client, no round trip), cleared before the connection goes back to the pool;
    SQLAlchemy's isolation-level option would send a ``SET`` at every checkin."""
    with db_engine.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        dbapi_connection.autocommit = True
        try:
            yield conn
        finally:
            if not dbapi_connection.closed:  # a broken one is discarded by the pool
                dbapi_connection.autocommit = False
