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

Overtaking (:func:`overtake`): the window's jobs are already in Redis, in order of their
priority only, and the first of them reaches the gpu when it frees. So a job the pick
would serve before them (a higher priority, aging included; or a tenant with nothing ahead
of the gpu while others' jobs wait there) is sent beyond the full window, into one of a
few extra places, with the Redis priority that puts it before them at every stage: its
own, or for a tenant's turn, one step above the best priority waiting there. It is then
the next job to start on the gpu, as if the window had had room when it was admitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

#: Seconds of waiting one priority level is worth (the rank function in migration 0003).
PRIORITY_AGING_S = 60

#: Jobs dispatched and not yet past the gpu stage (the window the dispatcher fills).
_IN_WINDOW = """kafka_topic = :topic AND status IN ('queued', 'running')
  AND coalesce(stage, 'preprocess') IN ('preprocess', 'gpu')"""

#: The next runnable job of the topic, locked: the tenant first, then the job's rank.
_NEXT_JOB = """
    SELECT {columns} FROM tasks t
    WHERE t.kafka_topic = :topic AND t.status = 'received'
      AND coalesce(t.tenant, '') = (
          SELECT tenant FROM tenants
          WHERE topic = :topic AND runnable > 0 AND inflight < :tenant_cap
          ORDER BY inflight / weight, picked_at LIMIT 1)
      AND (t.deadline IS NULL OR t.deadline > now())
    ORDER BY sonic_rank(t.received_at, t.priority)
    LIMIT 1 FOR UPDATE OF t SKIP LOCKED"""

#: Mark the chosen job (``{source}``, with its task_id) queued at the preprocess stage.
_QUEUE = """
UPDATE tasks SET status = 'queued', stage = 'preprocess', queued_at = now(), updated_at = now()
FROM {source} WHERE tasks.task_id = {source}.task_id{also}
RETURNING tasks.task_id, tasks.priority, coalesce(tasks.tenant, '') AS tenant,
          extract(epoch FROM clock_timestamp() - tasks.received_at) AS waited_s{returning}"""

_PICK = text(f"""
WITH job AS ({_NEXT_JOB.format(columns="t.task_id")}
)""" + _QUEUE.format(source="job", also="", returning=""))

#: The pick's choice, sent only when it must go before a job dispatched and not yet on
#: the gpu (``waiting``: queued or preprocessing, or preprocessed and not started there);
#: ``lane`` is the Redis priority it is published with.
_OVERTAKE = text(f"""
WITH ahead AS (
    SELECT coalesce(tenant, '') AS tenant, priority, sonic_rank(received_at, priority) AS rank,
           coalesce(stage, 'preprocess') = 'preprocess' OR lease_owner IS NULL AS waiting
    FROM tasks
    WHERE {_IN_WINDOW}
), job AS ({_NEXT_JOB.format(columns="t.task_id, t.priority, coalesce(t.tenant, '') AS tenant, "
                                    "sonic_rank(t.received_at, t.priority) AS rank")}
), lane AS (
    SELECT job.task_id, CASE
        WHEN job.tenant NOT IN (SELECT tenant FROM ahead)
             AND EXISTS (SELECT 1 FROM ahead WHERE waiting)
            THEN greatest(0, least(job.priority,
                                   (SELECT min(priority) FROM ahead WHERE waiting) - 1))
        WHEN EXISTS (SELECT 1 FROM ahead a WHERE a.waiting AND a.priority > job.priority
                                               AND a.rank > job.rank)
            THEN job.priority
        END AS lane
    FROM job
)""" + _QUEUE.format(source="lane", also=" AND lane.lane IS NOT NULL",
                     returning=", lane.lane"))

_AHEAD_OF_GPU = text(f"SELECT count(*) FROM tasks WHERE {_IN_WINDOW}")

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
    #: The Redis priority to publish it with (None: its own priority).
    lane: int | None = None

    @property
    def publish_priority(self) -> int:
        return self.priority if self.lane is None else self.lane


def pick(conn: Connection, topic: str, tenant_cap: int) -> Picked | None:
    """Mark the next runnable job of ``topic`` queued and return it (None: nothing runnable
    now). The caller's transaction holds the row until it commits."""
    row = conn.execute(_PICK, {"topic": topic, "tenant_cap": tenant_cap}).first()
    return Picked(row.task_id, int(row.priority), row.tenant,
                  float(row.waited_s or 0.0)) if row is not None else None


def overtake(conn: Connection, topic: str, tenant_cap: int) -> Picked | None:
    """Mark the pick's choice queued if it must go before a job already dispatched and not
    yet on the gpu (see the module docstring), with the Redis priority to publish it
    with in ``lane``; None otherwise (nothing changed)."""
    row = conn.execute(_OVERTAKE, {"topic": topic, "tenant_cap": tenant_cap}).first()
    return Picked(row.task_id, int(row.priority), row.tenant, float(row.waited_s or 0.0),
                  int(row.lane)) if row is not None else None


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
