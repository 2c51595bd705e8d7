"""admin views, their indexes, and the read-only role ``sonic_readonly``

Views for the questions admins ask (``docs/admin-sql.md`` has the ready queries):

- ``admin_stage_runs``: one row per stage run that ended (succeeded, failed, retrying,
  lease_lost, cancelled) with its seconds, the job's engine and tenant;
- ``admin_stage_latency``: p50 / p95 / max seconds of the succeeded runs per stage and
  engine over the last hour; ``admin_stage_latency_24h`` the same per stage over 24 hours;
- ``admin_throughput_hourly``: per hour of the last 48, jobs admitted and jobs finished
  by final status;
- ``admin_failures_by_code``: failed and expired jobs of the last 24 hours per error code
  and stage;
- ``admin_tenant_usage``: per tenant over the last 24 hours, gpu-seconds (every gpu run,
  whatever its outcome) and jobs finished;
- ``admin_stuck_jobs``: dispatched jobs (``queued``/``running``) whose lease expired, or
  that hold no lease and made no progress for 15 minutes (the reconciler's prey);
- ``admin_dlq_hourly``: rejected messages (``rejected`` rows: the DLQ messages whose
  ``task_id`` could be read) per hour of the last 48 and error code.

``engine`` is ``default`` for a job that named none (it ran ``SONIC_DEFAULT_ENGINE``).

The role: ``sonic_readonly`` (NOLOGIN) gets CONNECT, USAGE on the schema and SELECT on
every table and view, now and (default privileges) on the tables later migrations create.
Roles belong to the cluster, so it is created only when missing and only when the
migrating role may (CREATEROLE); otherwise a warning says so, and the grants are made
by hand once it exists (``docs/admin-sql.md``; the local stack creates the role before
any migration). Downgrade revokes this database's grants and leaves the role (other
databases may use it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROLE = "sonic_readonly"
#: The outcomes of a stage run that carry its seconds.
RUN_EVENTS = "('succeeded', 'failed', 'retrying', 'lease_lost', 'cancelled')"
STAGE_ORDER = "array_position(ARRAY['preprocess', 'gpu', 'encode', 'upload', 'callback'], stage)"

VIEWS = f"""
CREATE VIEW admin_stage_runs AS
SELECT e.id AS event_id, e.task_id, e.stage, j.engine, j.tenant, e.event AS outcome,
       e.attempt, e.worker, e.at AS ended_at, e.duration_s
  FROM task_events e
  -- One primary-key lookup per run (OFFSET 0 keeps it one): a window's runs never
  -- make the planner hash the whole tasks table.
  CROSS JOIN LATERAL (SELECT coalesce(t.engine, 'default') AS engine,
                             coalesce(t.tenant, '') AS tenant
                        FROM tasks t WHERE t.task_id = e.task_id OFFSET 0) j
 WHERE e.event IN {RUN_EVENTS} AND e.duration_s IS NOT NULL AND e.stage IS NOT NULL;

CREATE VIEW admin_stage_latency AS
SELECT stage, engine, count(*) AS runs,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_s)::numeric, 3) AS p50_s,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_s)::numeric, 3) AS p95_s,
       round(max(duration_s)::numeric, 3) AS max_s
  FROM admin_stage_runs
 WHERE outcome = 'succeeded' AND ended_at > now() - interval '1 hour'
 GROUP BY stage, engine
 ORDER BY {STAGE_ORDER}, engine;

CREATE VIEW admin_stage_latency_24h AS
SELECT stage, count(*) AS runs,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_s)::numeric, 3) AS p50_s,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_s)::numeric, 3) AS p95_s,
       round(max(duration_s)::numeric, 3) AS max_s
  FROM task_events
 WHERE event = 'succeeded' AND duration_s IS NOT NULL AND stage IS NOT NULL
   AND at > now() - interval '24 hours'
 GROUP BY stage
 ORDER BY {STAGE_ORDER};

CREATE VIEW admin_throughput_hourly AS
WITH hours AS (
  SELECT date_trunc('hour', now()) - n * interval '1 hour' AS hour
    FROM generate_series(0, 47) AS n),
moved AS (
  SELECT date_trunc('hour', received_at) AS hour, 'admitted' AS what FROM tasks
   WHERE received_at >= date_trunc('hour', now()) - interval '47 hours'
  UNION ALL
  SELECT date_trunc('hour', finished_at), status FROM tasks
   WHERE finished_at >= date_trunc('hour', now()) - interval '47 hours'),
counted AS (
  SELECT hour, count(*) FILTER (WHERE what = 'admitted') AS admitted,
         count(*) FILTER (WHERE what = 'completed') AS completed,
         count(*) FILTER (WHERE what = 'failed') AS failed,
         count(*) FILTER (WHERE what = 'rejected') AS rejected,
         count(*) FILTER (WHERE what = 'cancelled') AS cancelled,
         count(*) FILTER (WHERE what = 'expired') AS expired
    FROM moved GROUP BY hour)
SELECT h.hour, coalesce(c.admitted, 0) AS admitted, coalesce(c.completed, 0) AS completed,
       coalesce(c.failed, 0) AS failed, coalesce(c.rejected, 0) AS rejected,
       coalesce(c.cancelled, 0) AS cancelled, coalesce(c.expired, 0) AS expired
  FROM hours h LEFT JOIN counted c ON c.hour = h.hour
 ORDER BY h.hour;

CREATE VIEW admin_failures_by_code AS
SELECT error_code, stage, count(*) AS jobs, max(finished_at) AS last_at
  FROM tasks
 WHERE finished_at > now() - interval '24 hours' AND status IN ('failed', 'expired')
 GROUP BY error_code, stage
 ORDER BY jobs DESC, error_code;

CREATE VIEW admin_tenant_usage AS
SELECT tenant, round(sum(duration_s)::numeric, 1) AS gpu_seconds, count(*) AS gpu_runs,
       count(DISTINCT task_id) FILTER (WHERE outcome = 'succeeded') AS videos
  FROM admin_stage_runs
 WHERE stage = 'gpu' AND ended_at > now() - interval '24 hours'
 GROUP BY tenant
 ORDER BY gpu_seconds DESC;

CREATE VIEW admin_stuck_jobs AS
SELECT task_id, status, stage, coalesce(tenant, '') AS tenant, attempts, lease_owner,
       lease_expires_at, heartbeat_at, updated_at,
       round(extract(epoch FROM now() - updated_at)::numeric, 1) AS idle_s,
       CASE WHEN lease_owner IS NOT NULL THEN 'lease_expired' ELSE 'no_progress' END AS reason
  FROM tasks
 WHERE status IN ('queued', 'running')
   AND ((lease_owner IS NOT NULL AND lease_expires_at < now())
        OR (lease_owner IS NULL AND updated_at < now() - interval '15 minutes'))
 ORDER BY updated_at;

CREATE VIEW admin_dlq_hourly AS
SELECT date_trunc('hour', received_at) AS hour, error_code, count(*) AS messages
  FROM tasks
 WHERE status = 'rejected' AND received_at >= date_trunc('hour', now()) - interval '47 hours'
 GROUP BY 1, 2
 ORDER BY 1 DESC, 3 DESC;
"""

VIEW_NAMES = ("admin_dlq_hourly", "admin_stuck_jobs", "admin_tenant_usage",
              "admin_failures_by_code", "admin_throughput_hourly", "admin_stage_latency_24h",
              "admin_stage_latency", "admin_stage_runs")

#: The role, when missing and when this role may create it.
CREATE_ROLE = f"""
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
    BEGIN
      CREATE ROLE {ROLE} NOLOGIN;
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE WARNING 'role {ROLE} is missing and % may not create it: a superuser creates '
                    'it, then the grants of docs/admin-sql.md follow', current_user;
    END;
  END IF;
END $$;
"""

#: Read-only access to this database's schema, for the role if it exists.
GRANTS = f"""
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO {ROLE}', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO {ROLE}', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {ROLE}', current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {ROLE}',
                   current_schema());
  END IF;
END $$;
"""

REVOKES = f"""
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') THEN
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {ROLE}',
                   current_schema());
    EXECUTE format('REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {ROLE}', current_schema());
    EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {ROLE}', current_schema());
    EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {ROLE}', current_database());
  END IF;
END $$;
"""


def upgrade() -> None:
    # Stage runs by time: the latency and usage views read the window's runs from the
    # index alone (stage, seconds and task id included), then the task row by key.
    op.create_index("ix_task_events_runs", "task_events", ["at"],
                    postgresql_include=["stage", "duration_s", "task_id", "event"],
                    postgresql_where=sa.text(f"event IN {RUN_EVENTS} AND duration_s IS NOT NULL"))
    # Failed and expired jobs by the time they ended.
    op.create_index("ix_tasks_failed_finished", "tasks", ["finished_at"],
                    postgresql_include=["error_code", "stage"],
                    postgresql_where=sa.text("status IN ('failed', 'expired')"))
    op.execute(VIEWS)
    op.execute(CREATE_ROLE)
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(REVOKES)
    for name in VIEW_NAMES:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_tasks_failed_finished", "tasks")
    op.drop_index("ix_task_events_runs", "task_events")
