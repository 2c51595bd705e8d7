"""Admission-time scheduling of newly admitted jobs, inside the admission transaction.

    dependencies   one task_dependencies row per depends_on entry
    cycles         a job whose dependencies lead back to itself: rejected, dependency.cycle
    failed deps    a dependency already failed, cancelled, expired or rejected:
                   failed at once, dependency.failed naming it
    waiting        not the head of its ordering key in its topic, or a dependency not
                   completed yet

Jobs that pass all four stay ``received`` (runnable). The statements take a psycopg2
cursor (the admission's); ``ids`` are the task ids this batch inserted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_DEPENDENCIES = """
INSERT INTO task_dependencies (task_id, depends_on)
SELECT task_id, unnest(depends_on) FROM tasks
WHERE task_id = ANY(%(ids)s) AND cardinality(depends_on) > 0
ON CONFLICT DO NOTHING"""

#: Walk each new job's dependencies (UNION: every (origin, node) pair once, so it ends).
_CYCLES = """
WITH RECURSIVE walk(origin, node) AS (
    SELECT d.task_id, d.depends_on FROM task_dependencies d WHERE d.task_id = ANY(%(ids)s)
    UNION
    SELECT w.origin, d.depends_on FROM walk w JOIN task_dependencies d ON d.task_id = w.node
    WHERE w.node <> w.origin
)
UPDATE tasks SET status = 'rejected', error_code = 'dependency.cycle',
    error_message = 'its depends_on leads back to itself (a dependency cycle)',
    finished_at = now(), updated_at = now()
WHERE task_id IN (SELECT origin FROM walk WHERE node = origin) AND status = 'received'
RETURNING task_id"""

_FAILED_DEPENDENCIES = """
UPDATE tasks t SET status = 'failed', error_code = 'dependency.failed',
    error_message = format('it depends on %%s, which ended %%s%%s', f.dep, f.status,
                           coalesce(' (' || f.code || ')', '')),
    finished_at = now(), updated_at = now()
FROM (SELECT DISTINCT ON (d.task_id) d.task_id, d.depends_on AS dep, p.status,
             p.error_code AS code
      FROM task_dependencies d JOIN tasks p ON p.task_id = d.depends_on
      WHERE d.task_id = ANY(%(ids)s)
        AND p.status IN ('failed', 'cancelled', 'expired', 'rejected')
      ORDER BY d.task_id, d.depends_on) f
WHERE t.task_id = f.task_id AND t.status = 'received'
RETURNING t.task_id"""

_WAITING = """
UPDATE tasks SET status = 'waiting', updated_at = now()
WHERE task_id = ANY(%(ids)s) AND status = 'received'
  AND (ordering_key IS NOT NULL OR cardinality(depends_on) > 0)
  AND NOT (sonic_deps_ready(task_id) AND sonic_key_head(kafka_topic, ordering_key, seq))
RETURNING task_id"""


def settle(cur: Any, ids: Sequence[str]) -> dict[str, list[str]]:
    """Schedule the just-admitted ``ids`` (see the module docstring).

    Returns the ids per outcome: ``rejected`` (cycle), ``failed`` (a dependency failed),
    ``waiting``; the rest stay ``received``. Raises the driver's errors."""
    out: dict[str, list[str]] = {"rejected": [], "failed": [], "waiting": []}
    if not ids:
        return out
    params = {"ids": list(ids)}
    cur.execute(_DEPENDENCIES, params)
    for name, sql in (("rejected", _CYCLES), ("failed", _FAILED_DEPENDENCIES),
                      ("waiting", _WAITING)):
        cur.execute(sql, params)
        out[name] = [row[0] for row in cur.fetchall()]
    return out
