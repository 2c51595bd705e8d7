"""Choosing the next job: one statement, index-backed, ``FOR UPDATE SKIP LOCKED``.

Across tenants: the tenant of the topic with runnable jobs and the least work in flight
(``queued`` + ``running``) per weight, under its in-flight cap; among equals the one served
longest ago (round robin). Counting running work, not dispatches, is what keeps a tenant
with a burst of long jobs from taking every slot (``ix_tenants_pick``).

Inside the tenant: ``sonic_rank(received_at, priority)`` ascending, that is priority with
aging: each priority level (0 highest ... 9) is worth 60 s of waiting, so a job of priority
0 goes before priority-5 jobs received up to five minutes earlier, and a priority-9 job is
never starved (``ix_tasks_pick``). A job past its deadline is never picked.

The picked job becomes ``queued`` at the preprocess stage in the same statement (the
triggers move it from the tenant's runnable count to its in-flight count); the caller
publishes its chain before committing. The tenant row is read, not locked: one dispatcher
per topic picks, and admission, which updates the same row's counts in its own
transaction, must not make the pick skip the tenant.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

#: Seconds of waiting one priority level is worth (the rank function in migration 0003).
PRIORITY_AGING_S = 60

_PICK = text("""
WITH job AS (
    SELECT t.task_id FROM tasks t
    WHERE t.kafka_topic = :topic AND t.status = 'received'
      AND coalesce(t.tenant, '') = (
          SELECT tenant FROM tenants
          WHERE topic = :topic AND runnable > 0 AND inflight < :tenant_cap
          ORDER BY inflight / weight, picked_at LIMIT 1)
      AND (t.deadline IS NULL OR t.deadline > now())
    ORDER BY sonic_rank(t.received_at, t.priority)
    LIMIT 1 FOR UPDATE OF t SKIP LOCKED
)
UPDATE tasks SET status = 'queued', stage = 'preprocess', queued_at = now(), updated_at = now()
FROM job WHERE tasks.task_id = job.task_id
RETURNING tasks.task_id, tasks.priority, coalesce(tasks.tenant, '') AS tenant,
          extract(epoch FROM clock_timestamp() - tasks.received_at) AS waited_s""")

#: Jobs dispatched and not yet past the gpu stage: the window the dispatcher fills.
_AHEAD_OF_GPU = text("""
SELECT count(*) FROM tasks
WHERE kafka_topic = :topic AND status IN ('queued', 'running')
  AND coalesce(stage, 'preprocess') IN ('preprocess', 'gpu')""")

_WEIGHTS = text("""
INSERT INTO tenants (topic, tenant, weight) VALUES (:topic, :tenant, :weight)
ON CONFLICT (topic, tenant) DO UPDATE SET weight = excluded.weight""")

_BACKLOG = text("SELECT coalesce(sum(runnable + waiting), 0) FROM tenants WHERE topic = :topic")


@dataclass(frozen=True)
class Picked:
    task_id: str
    priority: int
    tenant: str
    #: Seconds since its admission, at the pick (PostgreSQL's clock).
    waited_s: float = 0.0


def pick(conn: Connection, topic: str, tenant_cap: int) -> Picked | None:
    """Mark the next runnable job of ``topic`` queued and return it (None: nothing runnable
    now). The caller's transaction holds the row until it commits."""
    row = conn.execute(_PICK, {"topic": topic, "tenant_cap": tenant_cap}).first()
    return Picked(row.task_id, int(row.priority), row.tenant,
                  float(row.waited_s or 0.0)) if row is not None else None


def ahead_of_gpu(conn: Connection, topic: str) -> int:
    """Jobs of ``topic`` dispatched and not yet past the gpu stage."""
    return int(conn.execute(_AHEAD_OF_GPU, {"topic": topic}).scalar_one())


def backlog(conn: Connection, topic: str) -> int:
    """Admitted jobs of ``topic`` not dispatched yet (runnable + waiting), from the tenant
    counts: a sum over tenants, not a scan of the tasks table."""
    return int(conn.execute(_BACKLOG, {"topic": topic}).scalar_one())


def set_weights(conn: Connection, topic: str, weights: dict[str, float]) -> None:
    """Store tenants' weights for ``topic`` (settings: ``SONIC_TENANT_WEIGHTS``)."""
    for tenant, weight in weights.items():
        conn.execute(_WEIGHTS, {"topic": topic, "tenant": tenant, "weight": weight})
