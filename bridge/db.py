"""One raw psycopg2 connection for the loop's batch statements (the hot path)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine


class Postgres:
    def __init__(self, db_engine: Engine) -> None:
        self.db_engine = db_engine
        self._conn: Any = None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor in a transaction: committed on success, rolled back on error.

        After a connection error the connection is dropped; the next call opens a new one.
        """
        if self._conn is None:
            self._conn = self.db_engine.raw_connection()
        conn = self._conn
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001 - the connection is gone; drop it below
                pass
            if getattr(conn.dbapi_connection, "closed", 1):
                conn.invalidate()
                self._conn = None
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
