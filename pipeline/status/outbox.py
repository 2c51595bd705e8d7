"""The outbox's SQL: the relay's queue, the readers' history, pruning.

    pending(conn, topic, limit)          unpublished events of a topic, in id order
    latest_pending(conn, topic, limit)   the newest unpublished event of each task
    mark_published(conn, ids)
    pending_count(conn, topic)
    prune(conn, topic, older_than_s)     published events past retention (a task's newest
                                         event is kept: its seq goes on, its status stays)
    expire_unpublished(conn, older_than_s)   events of every topic that waited for Kafka
                                         longer than that: dropped, a task's newest kept
                                         (a topic no bridge serves any more, or an outage
                                         of days, must not grow the table without bound)
    events_after(db_engine, task_id, after_id, limit)    a task's events after an id
    latest(db_engine, task_id)                           a task's newest event

The triggers of migration 0004 write the rows; nothing here inserts.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Engine, text

from pipeline.status.events import StatusEvent, from_row

_PENDING = text("""
SELECT id, seq, body FROM status_outbox
WHERE topic = :topic AND published_at IS NULL ORDER BY id LIMIT :limit""")

_LATEST_PENDING = text("""
SELECT DISTINCT ON (task_id) id, seq, body FROM (
    SELECT id, task_id, seq, body FROM status_outbox
    WHERE topic = :topic AND published_at IS NULL ORDER BY id LIMIT :limit) p
ORDER BY task_id, id DESC""")

_MARK = text("UPDATE status_outbox SET published_at = clock_timestamp() WHERE id = ANY(:ids)")

_COUNT = text("SELECT count(*) FROM status_outbox WHERE topic = :topic AND published_at IS NULL")

_PRUNE = text("""
DELETE FROM status_outbox o WHERE o.id IN (
    SELECT id FROM status_outbox
    WHERE topic = :topic AND published_at IS NOT NULL
      AND published_at < now() - make_interval(secs => :older)
    ORDER BY published_at LIMIT :limit)
  AND EXISTS (SELECT 1 FROM status_outbox n WHERE n.task_id = o.task_id AND n.id > o.id)""")

#: Topics with unpublished events: a loose index scan of ``ix_status_outbox_pending`` (one
#: probe per topic, however many events wait).
_PENDING_TOPICS = text("""
WITH RECURSIVE t(topic) AS (
    (SELECT topic FROM status_outbox WHERE published_at IS NULL ORDER BY topic LIMIT 1)
    UNION ALL
    SELECT (SELECT o.topic FROM status_outbox o
            WHERE o.published_at IS NULL AND o.topic > t.topic ORDER BY o.topic LIMIT 1)
    FROM t WHERE t.topic IS NOT NULL)
SELECT topic FROM t WHERE topic IS NOT NULL""")

#: A topic's oldest ``limit`` unpublished events (ids follow creation), those created
#: before the cut, a task's newest kept. Reads at most ``limit`` index entries.
_EXPIRE = text("""
DELETE FROM status_outbox o WHERE o.id IN (
    SELECT id FROM (
        SELECT id, created_at FROM status_outbox
        WHERE topic = :topic AND published_at IS NULL ORDER BY id LIMIT :limit) p
    WHERE p.created_at < now() - make_interval(secs => :older))
  AND EXISTS (SELECT 1 FROM status_outbox n WHERE n.task_id = o.task_id AND n.id > o.id)""")

_AFTER = text("""
SELECT id, seq, body FROM status_outbox WHERE task_id = :t AND id > :after
ORDER BY id LIMIT :limit""")

_LATEST = text("""
SELECT id, seq, body FROM status_outbox WHERE task_id = :t ORDER BY id DESC LIMIT 1""")

#: A task with no outbox row (admitted before migration 0004): its row told as-is.
_FROM_TASK = text("""
SELECT 0 AS id, 0 AS seq, sonic_status_body(t, t.status, NULL, t.updated_at, NULL, NULL) AS body
FROM tasks t WHERE t.task_id = :t""")


def pending(conn: Connection, topic: str, limit: int) -> list[StatusEvent]:
    """Up to ``limit`` unpublished events of ``topic``, oldest id first."""
    return [from_row(r) for r in conn.execute(_PENDING, {"topic": topic, "limit": limit})
            .mappings()]


def latest_pending(conn: Connection, topic: str, limit: int = 100_000) -> list[StatusEvent]:
    """The newest unpublished event of each task among the first ``limit`` of ``topic``."""
    return [from_row(r) for r in conn.execute(_LATEST_PENDING, {"topic": topic,
                                                                "limit": limit}).mappings()]


def mark_published(conn: Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute(_MARK, {"ids": list(ids)})


def pending_count(conn: Connection, topic: str) -> int:
    return int(conn.execute(_COUNT, {"topic": topic}).scalar_one())


def prune(conn: Connection, topic: str, older_than_s: float, limit: int = 5000) -> int:
    """Delete up to ``limit`` events of ``topic`` published over ``older_than_s`` ago
    (never a task's newest); how many went."""
    return conn.execute(_PRUNE, {"topic": topic, "older": older_than_s,
                                 "limit": limit}).rowcount


def expire_unpublished(conn: Connection, older_than_s: float,
                       limit: int = 5000) -> dict[str, int]:
    """Delete, in every topic, unpublished events created over ``older_than_s`` seconds
    ago (up to ``limit`` examined per topic, oldest first; never a task's newest event).
    Returns ``{topic: events deleted}`` for the topics that lost any."""
    dropped: dict[str, int] = {}
    for topic in conn.execute(_PENDING_TOPICS).scalars().all():
        count = conn.execute(_EXPIRE, {"topic": topic, "older": older_than_s,
                                       "limit": limit}).rowcount
        if count:
            dropped[topic] = count
    return dropped


def events_after(db_engine: Engine, task_id: str, after_id: int = 0,
                 limit: int = 500) -> list[StatusEvent]:
    """The events of ``task_id`` with an id above ``after_id`` (0: from the first kept),
    oldest first, at most ``limit``: what a Server-Sent Events stream resumed with
    ``Last-Event-ID: <after_id>`` sends next. Published or not (the outbox is the source;
    Kafka is one of its readers). Raises the driver's errors."""
    with db_engine.connect() as conn:
        rows = conn.execute(_AFTER, {"t": task_id, "after": after_id, "limit": limit})
        return [from_row(r) for r in rows.mappings()]


def latest(db_engine: Engine, task_id: str) -> StatusEvent | None:
    """The newest event of ``task_id`` from PostgreSQL (for a task admitted before the
    outbox existed, its row as an event with ``id`` and ``seq`` 0); None: no such task."""
    with db_engine.connect() as conn:
        row = conn.execute(_LATEST, {"t": task_id}).mappings().first()
        if row is None:
            row = conn.execute(_FROM_TASK, {"t": task_id}).mappings().first()
        return from_row(row) if row is not None else None
