"""The dispatcher's upkeep, every second or so: set-based statements, bounded by ``limit``.

    expire       jobs of the topic past their deadline that have not started (received,
                 waiting, or queued with no stage running): ``expired``, ``task.deadline``
    resolve      waiting jobs whose ordering key and dependencies allow them now, or
                 whose dependency ended without completing (``dependency.failed``): the
                 triggers do both at once; this catches a job admitted while what it
                 waited for was ending, and a dependency refused at the door after its
                 dependents were admitted (a row inserted final fires no trigger); and
                 those waiting longer than ``dependency_wait_s`` for an id never
                 admitted: ``dependency.unknown``
    owed         jobs the scheduler finished (expired, cancelled, a dependency failed) and
                 messages rejected at the door that named an allowed callback URL, whose
                 callback no worker will send: returned once, to be published;
                 those without a callback URL are settled as ``none``
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, text

_EXPIRE = text("""
UPDATE tasks SET status = 'expired', error_code = 'task.deadline',
    error_message = 'its deadline ' || to_char(deadline AT TIME ZONE 'UTC',
                                                'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                    || ' passed before it started',
    finished_at = now(), updated_at = now()
WHERE task_id IN (
    SELECT task_id FROM tasks
    WHERE deadline < now() AND status IN ('received', 'waiting', 'queued')
      AND lease_owner IS NULL AND kafka_topic = :topic
    ORDER BY deadline LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING task_id""")

_WAITING_PAGE = text("""
SELECT task_id, received_at FROM tasks
WHERE status = 'waiting' AND kafka_topic = :topic AND received_at >= :after
ORDER BY received_at LIMIT :limit""")

_RELEASE = text("""
UPDATE tasks SET status = 'received', updated_at = now()
WHERE task_id = ANY(:ids) AND status = 'waiting'
  AND sonic_deps_ready(task_id) AND sonic_key_head(kafka_topic, ordering_key, seq)
RETURNING task_id""")

_FAILED = text("""
UPDATE tasks t SET status = 'failed', error_code = 'dependency.failed',
    error_message = format('it depends on %s, which ended %s%s', f.dep, f.status,
                           coalesce(' (' || f.code || ')', '')),
    finished_at = now(), updated_at = now()
FROM (SELECT DISTINCT ON (d.task_id) d.task_id, d.depends_on AS dep, p.status,
             p.error_code AS code
      FROM task_dependencies d JOIN tasks p ON p.task_id = d.depends_on
      WHERE d.task_id = ANY(:ids)
        AND p.status IN ('failed', 'cancelled', 'expired', 'rejected')
      ORDER BY d.task_id, d.depends_on) f
WHERE t.task_id = f.task_id AND t.status = 'waiting'
RETURNING t.task_id""")

_UNKNOWN = text("""
UPDATE tasks t SET status = 'failed', error_code = 'dependency.unknown',
    error_message = format('it depends on %s, which was never admitted (waited %s s)',
                           u.dep, :wait),
    finished_at = now(), updated_at = now()
FROM (SELECT DISTINCT ON (d.task_id) d.task_id, d.depends_on AS dep
      FROM tasks w JOIN task_dependencies d ON d.task_id = w.task_id
      LEFT JOIN tasks p ON p.task_id = d.depends_on
      WHERE w.status = 'waiting' AND w.kafka_topic = :topic
        AND w.received_at < now() - make_interval(secs => :wait) AND p.task_id IS NULL
      ORDER BY d.task_id, d.depends_on LIMIT :limit) u
WHERE t.task_id = u.task_id AND t.status = 'waiting'
RETURNING t.task_id""")

_OWED = text("""
UPDATE tasks SET callback_status = CASE WHEN callback_url IS NULL THEN 'none' ELSE 'queued' END
WHERE task_id IN (
    SELECT task_id FROM tasks
    WHERE callback_status IS NULL AND kafka_topic = :topic AND lease_owner IS NULL
      AND (status IN ('cancelled', 'expired')
           OR error_code IN ('dependency.failed', 'dependency.unknown', 'dependency.cycle')
           OR (status = 'rejected' AND callback_url IS NOT NULL))
    ORDER BY finished_at LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING task_id, priority, callback_status""")


def expire(conn: Connection, topic: str, limit: int = 500) -> list[str]:
    """Expire jobs past their deadline that have not started; their ids."""
    return [r.task_id for r in conn.execute(_EXPIRE, {"topic": topic, "limit": limit})]


def resolve(conn: Connection, topic: str, after: datetime, wait_s: float,
            limit: int = 1000) -> tuple[list[str], list[str], datetime | None]:
    """Release the waiting jobs of one page (``received_at >= after``) that may run now,
    fail those of the page whose dependency ended without completing, and fail those
    waiting longer than ``wait_s`` for an id never admitted.

    Returns (released, failed, where the next page starts: None to start over)."""
    page = conn.execute(_WAITING_PAGE, {"topic": topic, "after": after,
                                        "limit": limit}).all()
    ids = {"ids": [r.task_id for r in page]}
    failed = [r.task_id for r in conn.execute(_FAILED, ids)] if page else []
    released = [r.task_id for r in conn.execute(_RELEASE, ids)] if page else []
    failed += [r.task_id for r in conn.execute(_UNKNOWN, {"topic": topic, "wait": wait_s,
                                                          "limit": limit})]
    return released, failed, (page[-1].received_at if len(page) >= limit else None)


def owed_callbacks(conn: Connection, topic: str, limit: int = 500) -> list[tuple[str, int]]:
    """(task id, priority) of jobs finished by the scheduler whose callback must be
    published now (those with no callback URL are settled here)."""
    rows = conn.execute(_OWED, {"topic": topic, "limit": limit}).all()
    return [(r.task_id, int(r.priority)) for r in rows if r.callback_status == "queued"]
