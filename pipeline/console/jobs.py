"""Read-side queries for the CLI's job verbs, one statement each (PostgreSQL).

Every function takes an open SQLAlchemy connection and returns plain dicts/lists; the
caller turns driver errors into one line (:func:`services.reaching_postgres`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from pipeline.settings import STAGES
from pipeline.state.models import FINAL_VALUES

_TASK = text("SELECT * FROM tasks WHERE task_id = :t")

#: The task's events: its task_events rows, and the dispatcher's status changes, which
#: only the status outbox tells (queued, waiting, released, expired, a dependency failed
#: or cycled; kept as long as the outbox keeps them), in time order.
_EVENTS = text("""
SELECT source, id, stage, event, worker, attempt, at, duration_s, detail FROM (
    SELECT 'task_events' AS source, id, stage, event, worker, attempt, at, duration_s,
           detail
    FROM task_events WHERE task_id = :t
    UNION ALL
    SELECT 'status_outbox', o.id, o.body->>'stage', o.event, NULL,
           coalesce((o.body->>'attempt')::int, 0), o.created_at, NULL,
           CASE WHEN jsonb_typeof(o.body->'error') = 'object' THEN o.body->'error'
                ELSE '{}'::jsonb END
    FROM status_outbox o
    WHERE o.task_id = :t AND (o.event IN ('queued', 'waiting', 'released', 'expired')
          OR (o.event IN ('failed', 'rejected')
              AND o.body->'error'->>'code' LIKE 'dependency.%'))
) e ORDER BY at, source DESC, id""")

#: The last successful run of each stage (a stage re-run after a crash counts once).
_TIMINGS = text("""
SELECT DISTINCT ON (stage) stage, duration_s FROM task_events
WHERE task_id = :t AND event = 'succeeded' AND stage IS NOT NULL
ORDER BY stage, id DESC""")

_DEPENDENCIES = text("""
SELECT d.depends_on, p.status FROM task_dependencies d
LEFT JOIN tasks p ON p.task_id = d.depends_on
WHERE d.task_id = :t ORDER BY d.depends_on""")

#: The job before this one with the same ordering key, not final yet.
_PREDECESSOR = text(f"""
SELECT task_id, status FROM tasks
WHERE ordering_key = :key AND kafka_topic IS NOT DISTINCT FROM :topic AND seq < :seq
  AND status NOT IN ({FINAL_VALUES})
ORDER BY seq DESC LIMIT 1""")

#: Runnable jobs the dispatcher takes before this one inside its tenant (its order:
#: ``sonic_rank``), and runnable jobs of the topic in all.
_BACKLOG_POSITION = text("""
SELECT count(*) FILTER (
         WHERE coalesce(tenant, '') = coalesce(:tenant, '')
           AND (sonic_rank(received_at, priority), seq) < (sonic_rank(:received_at, CAST(:priority AS smallint)), :seq)
       ) AS ahead_in_tenant,
       count(*) AS runnable
FROM tasks WHERE kafka_topic IS NOT DISTINCT FROM :topic AND status = 'received'""")

#: Jobs queued for the same stage that were queued before this one.
_QUEUE_POSITION = text("""
SELECT count(*) FROM tasks
WHERE kafka_topic IS NOT DISTINCT FROM :topic AND status = 'queued' AND stage = :stage
  AND updated_at < :updated_at""")


def task(conn: Connection, task_id: str) -> dict[str, Any] | None:
    """The task's row as a dict (every column), or None when unknown."""
    row = conn.execute(_TASK, {"t": task_id}).mappings().first()
    return dict(row) if row is not None else None


def events(conn: Connection, task_id: str) -> list[dict[str, Any]]:
    """The task's events, oldest first: ``source`` (``task_events`` or, for the
    dispatcher's status changes, ``status_outbox``), ``id`` (in its source), ``stage``,
    ``event``, ``worker``, ``attempt``, ``at``, ``duration_s``, ``detail``."""
    return [dict(r) for r in conn.execute(_EVENTS, {"t": task_id}).mappings()]


def stage_timings(conn: Connection, task_id: str) -> dict[str, float]:
    """Seconds each stage took (its last successful run), by stage."""
    found = {r.stage: float(r.duration_s or 0.0)
             for r in conn.execute(_TIMINGS, {"t": task_id})}
    order = {stage: i for i, stage in enumerate(STAGES)}
    return dict(sorted(found.items(), key=lambda kv: order.get(kv[0], len(order))))


def waiting_on(conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
    """What a ``waiting`` job waits for: ``dependencies`` (id -> status, None when never
    admitted) not completed, and ``previous`` (the job before it with its ordering key)."""
    deps = {r.depends_on: r.status for r in conn.execute(_DEPENDENCIES, {"t": row["task_id"]})
            if r.status != "completed"}
    previous = None
    if row.get("ordering_key"):
        found = conn.execute(_PREDECESSOR, {"key": row["ordering_key"],
                                            "topic": row["kafka_topic"],
                                            "seq": row["seq"]}).first()
        if found is not None:
            previous = {"task_id": found.task_id, "status": found.status,
                        "ordering_key": row["ordering_key"]}
    return {"dependencies": deps, "previous": previous}


def backlog_position(conn: Connection, row: dict[str, Any]) -> dict[str, int]:
    """For a runnable (``received``) job: ``position`` in its tenant's dispatch order
    (1 = next) and ``runnable`` jobs of its topic in all."""
    found = conn.execute(_BACKLOG_POSITION, {
        "tenant": row["tenant"], "received_at": row["received_at"],
        "priority": row["priority"], "seq": row["seq"], "topic": row["kafka_topic"]}).one()
    return {"position": int(found.ahead_in_tenant) + 1, "runnable": int(found.runnable)}


def queue_position(conn: Connection, row: dict[str, Any]) -> int:
    """For a ``queued`` job: its place among the jobs queued for the same stage (1 = next)."""
    ahead = conn.execute(_QUEUE_POSITION, {"topic": row["kafka_topic"], "stage": row["stage"],
                                           "updated_at": row["updated_at"]}).scalar_one()
    return int(ahead) + 1


#: Columns ``list`` shows (and returns with ``--json``).
LIST_COLUMNS = ("task_id", "status", "stage", "progress", "tenant", "priority", "error_code",
                "received_at", "finished_at", "result_url")


def list_tasks(conn: Connection, *, statuses: tuple[str, ...] = (), tenant: str | None = None,
               code: str | None = None, since: datetime | None = None,
               topic: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Tasks matching every filter given, newest first (``received_at``), at most ``limit``.
    ``code`` matches an exact error code or, ending in ``.``/``*``, a family (``image.``)."""
    where, params = ["true"], {"limit": limit}
    if statuses:
        where.append("status = ANY(:statuses)")
        params["statuses"] = list(statuses)
    if tenant is not None:
        where.append("tenant = :tenant")
        params["tenant"] = tenant
    if code:
        if code.endswith(("*", ".")):
            where.append("error_code LIKE :code")
            params["code"] = code.rstrip("*").replace("%", r"\%").replace("_", r"\_") + "%"
        else:
            where.append("error_code = :code")
            params["code"] = code
    if since is not None:
        where.append("received_at >= :since")
        params["since"] = since
    if topic is not None:
        where.append("kafka_topic = :topic")
        params["topic"] = topic
    sql = (f"SELECT {', '.join(LIST_COLUMNS)} FROM tasks WHERE {' AND '.join(where)} "
           "ORDER BY received_at DESC, task_id LIMIT :limit")
    return [dict(r) for r in conn.execute(text(sql), params).mappings()]
