"""Waking the dispatcher at once: PostgreSQL LISTEN/NOTIFY on one channel, the topic as
payload.

    notify(cur, topics)          a psycopg2 cursor's transaction (admission) tells the
                                 topics' dispatchers that jobs became runnable
    NOTIFY_TOPIC                 the same from SQLAlchemy, for one task's topic (a stage
                                 that leaves the gpu or ends a job: a window slot frees,
                                 a job waiting for it may be released)
    NOTIFY_TOPICS                the same for a list of topics (a cancel)
    listen(conn)                 on the dispatcher's own session (autocommit)
    wait(conn, topic, timeout_s, stop)   until a notification for ``topic``, ``stop`` or
                                 ``timeout_s``: True when woken by a notification

PostgreSQL delivers a notification when its transaction commits, never before (the rows
it announces are visible then) and never for one rolled back; several of one payload in
one transaction are delivered once. A notification is only a hint: one lost (the
listener's session dropped and a standby took over, a notify in a transaction that never
committed) delays a job to the dispatcher's next poll (``SONIC_DISPATCH_IDLE_S``), no more.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, text

#: The channel every dispatcher listens on (payload: the task topic).
CHANNEL = "sonic_dispatch"

#: ``{"t": task_id}``: notify the dispatcher of that task's topic.
NOTIFY_TOPIC = text(f"SELECT pg_notify('{CHANNEL}', kafka_topic) FROM tasks WHERE task_id = :t")
#: ``{"topics": [topic, ...]}``: notify the dispatchers of those topics.
NOTIFY_TOPICS = text(f"SELECT pg_notify('{CHANNEL}', t) FROM unnest(CAST(:topics AS text[])) t")

#: The longest ``wait`` sleeps before it looks at ``stop`` again (seconds).
STOP_CHECK_S = 0.1


def notify(cur: Any, topics: Iterable[str]) -> None:
    """Queue a notification per topic in ``cur``'s transaction (sent at its commit).
    Raises the driver's errors."""
    names = sorted(set(topics))
    if names:
        cur.execute("SELECT pg_notify(%s, t) FROM unnest(%s::text[]) AS t", (CHANNEL, names))


def listen(conn: Connection) -> None:
    """Listen on :data:`CHANNEL` in ``conn``'s session (an autocommit connection: a
    session inside a transaction gets its notifications only when that one ends)."""
    conn.exec_driver_sql(f"LISTEN {CHANNEL}")


def wait(conn: Connection, topic: str, timeout_s: float,
         stop: threading.Event | None = None) -> bool:
    """Block until a notification for ``topic`` arrives on ``conn`` (True), or
    ``timeout_s`` passed or ``stop`` is set (False). Notifications for other topics are
    consumed and ignored. Raises the driver's errors (a dead session)."""
    raw = conn.connection.driver_connection
    end = time.monotonic() + timeout_s
    while True:
        if _take(raw, topic):
            return True
        left = end - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            return False
        readable, _, _ = select.select([raw], [], [], min(left, STOP_CHECK_S))
        if readable:
            raw.poll()


def _take(raw: Any, topic: str) -> bool:
    """Empty the session's received notifications; whether one was for ``topic``."""
    found = False
    while raw.notifies:
        found = raw.notifies.pop(0).payload == topic or found
    return found
