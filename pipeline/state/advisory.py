"""A PostgreSQL session-level advisory lock held on a connection of its own: one active
holder of a role among processes (a topic's dispatcher, its status relay); the others
stand by and try again.

    lock = SessionLock(db_engine, "sonic-dispatch:<topic>")
    lock.hold()      True while held: checks a held session is alive, else tries to take
                     the lock (False: another session has it). Raises the driver's errors
                     (the session may be gone with the lock: call drop() then)
    lock.drop()      give it back and close the session (closing frees it anyway)
    lock.connection  the session that holds it (None when not held), in autocommit: never
                     idle in a transaction, so it may also LISTEN

The key is hashed to the lock's number by PostgreSQL (``hashtext``).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, text

_LOCK = text("SELECT pg_try_advisory_lock(hashtext(:key))")
_UNLOCK = text("SELECT pg_advisory_unlock(hashtext(:key))")
_ALIVE = text("SELECT 1")


class SessionLock:
    """The advisory lock ``key`` held by one session (see the module docstring).

    ``on_take()`` runs right after the lock is taken (an error it raises propagates from
    :meth:`hold` with the lock held: the caller drops it); ``on_drop()`` when a held lock
    is given back or lost."""

    def __init__(self, db_engine: Engine, key: str, *,
                 on_take: Callable[[], None] | None = None,
                 on_drop: Callable[[], None] | None = None) -> None:
        self.db, self.key = db_engine, key
        self._on_take, self._on_drop = on_take, on_drop
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    @property
    def connection(self) -> Connection | None:
        return self._conn

    def hold(self) -> bool:
        """True while this holder has the lock (taken now if it was free)."""
        if self._conn is not None:
            self._conn.execute(_ALIVE)  # a dead connection lost the lock: this raises
            return True
        conn = self.db.connect()
        try:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            got = bool(conn.execute(_LOCK, {"key": self.key}).scalar())
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        if self._on_take is not None:
            self._on_take()
        return True

    def drop(self) -> None:
        """Give the lock back (no-op when not held); never raises for a dead session."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(_UNLOCK, {"key": self.key})
        except Exception:  # noqa: BLE001 - closing the session frees the lock anyway
            pass
        finally:
            conn.close()
            if self._on_drop is not None:
                self._on_drop()
