"""scheduler: admission order, dependencies, tenants' shares, the expired status

- ``tasks.seq``: admission order (an identity; a batch is inserted in offset order);
- ``task_dependencies``: one row per ``depends_on`` entry;
- ``tenants``: per tenant its weight and live counts of runnable (``received``), waiting
  and in-flight (``queued``/``running``) jobs, kept by triggers, so the dispatcher picks a
  tenant from a small indexed table;
- ``sonic_rank(received_at, priority)``: the dispatch order inside a tenant, priority with
  aging (60 s per level: a priority-9 job overtakes priority-0 jobs received 9 minutes
  after it, so low priority is never starved);
- triggers: tenant counts on every status change; on a job becoming final, its dependents
  are released (all dependencies completed) or failed (``dependency.failed``), and the
  next job of its ordering key is released;
- the ``expired`` status (a job past its deadline before it started).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_STATUSES = ("received", "waiting", "queued", "running", "completed", "failed", "rejected",
                "cancelled")
STATUSES = OLD_STATUSES + ("expired",)
FINAL = "('completed', 'failed', 'rejected', 'cancelled', 'expired')"
#: Finished by the scheduler itself (never started, or stopped between stages): no worker
#: sends their callback, the dispatcher does.
NOTIFY_WHERE = ("callback_status IS NULL AND (status IN ('cancelled', 'expired') "
                "OR error_code IN ('dependency.failed', 'dependency.unknown', 'dependency.cycle') "
                "OR (status = 'rejected' AND callback_url IS NOT NULL))")

FUNCTIONS = f"""
CREATE FUNCTION sonic_rank(received_at timestamptz, priority smallint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT extract(epoch FROM received_at) + priority * 60.0 $$;

CREATE FUNCTION sonic_deps_ready(job text) RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT NOT EXISTS (
    SELECT 1 FROM task_dependencies d LEFT JOIN tasks p ON p.task_id = d.depends_on
    WHERE d.task_id = job AND p.status IS DISTINCT FROM 'completed') $$;

CREATE FUNCTION sonic_key_head(key text, job_seq bigint) RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT key IS NULL OR NOT EXISTS (
    SELECT 1 FROM tasks o WHERE o.ordering_key = key AND o.seq < job_seq
      AND o.status NOT IN {FINAL}) $$;

-- Tenant counts: a row-level trigger for updates and deletes, a statement-level one with a
-- transition table for inserts (admission inserts a thousand rows at once).
CREATE FUNCTION sonic_count(topic_key text, tenant_key text, status text, delta int)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO tenants AS t (topic, tenant, runnable, waiting, inflight)
  VALUES (topic_key, tenant_key,
          CASE WHEN status = 'received' THEN delta ELSE 0 END,
          CASE WHEN status = 'waiting' THEN delta ELSE 0 END,
          CASE WHEN status IN ('queued', 'running') THEN delta ELSE 0 END)
  ON CONFLICT (topic, tenant) DO UPDATE SET
    runnable = t.runnable + excluded.runnable, waiting = t.waiting + excluded.waiting,
    inflight = t.inflight + excluded.inflight $$;

CREATE FUNCTION sonic_counts_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status IN ('received', 'waiting', 'queued', 'running') THEN
    PERFORM sonic_count(coalesce(OLD.kafka_topic, ''), coalesce(OLD.tenant, ''), OLD.status, -1);
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.status IN ('received', 'waiting', 'queued', 'running') THEN
    PERFORM sonic_count(coalesce(NEW.kafka_topic, ''), coalesce(NEW.tenant, ''), NEW.status, 1);
  END IF;
  -- Served just now: the next pick prefers the other tenants of the same load.
  IF TG_OP = 'UPDATE' AND OLD.status = 'received' AND NEW.status = 'queued' THEN
    UPDATE tenants SET picked_at = clock_timestamp()
    WHERE topic = coalesce(NEW.kafka_topic, '') AND tenant = coalesce(NEW.tenant, '');
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION sonic_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO tenants AS t (topic, tenant, runnable, waiting, inflight)
  SELECT coalesce(kafka_topic, ''), coalesce(tenant, ''),
         count(*) FILTER (WHERE status = 'received'),
         count(*) FILTER (WHERE status = 'waiting'),
         count(*) FILTER (WHERE status IN ('queued', 'running'))
  FROM new_rows WHERE status IN ('received', 'waiting', 'queued', 'running')
  GROUP BY 1, 2
  ON CONFLICT (topic, tenant) DO UPDATE SET
    runnable = t.runnable + excluded.runnable, waiting = t.waiting + excluded.waiting,
    inflight = t.inflight + excluded.inflight;
  RETURN NULL;
END $$;

-- A job became final: release or fail what waited for it.
CREATE FUNCTION sonic_release() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  nxt tasks%ROWTYPE;
BEGIN
  IF NEW.status = 'completed' THEN
    UPDATE tasks t SET status = 'received', updated_at = now()
    WHERE t.status = 'waiting'
      AND t.task_id IN (SELECT d.task_id FROM task_dependencies d WHERE d.depends_on = NEW.task_id)
      AND sonic_deps_ready(t.task_id) AND sonic_key_head(t.ordering_key, t.seq);
  ELSE
    UPDATE tasks t SET status = 'failed', error_code = 'dependency.failed',
        error_message = format('it depends on %s, which ended %s%s', NEW.task_id, NEW.status,
                               coalesce(' (' || NEW.error_code || ')', '')),
        finished_at = now(), updated_at = now()
    WHERE t.status IN ('waiting', 'received')
      AND t.task_id IN (SELECT d.task_id FROM task_dependencies d WHERE d.depends_on = NEW.task_id);
  END IF;
  IF NEW.ordering_key IS NOT NULL THEN
    SELECT * INTO nxt FROM tasks
    WHERE ordering_key = NEW.ordering_key AND status NOT IN {FINAL}
    ORDER BY seq LIMIT 1;
    IF FOUND AND nxt.status = 'waiting' AND sonic_deps_ready(nxt.task_id) THEN
      UPDATE tasks SET status = 'received', updated_at = now() WHERE task_id = nxt.task_id;
    END IF;
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER tasks_counts_insert AFTER INSERT ON tasks
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sonic_counts_insert();
CREATE TRIGGER tasks_counts_update AFTER UPDATE OF status, tenant ON tasks FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.tenant IS DISTINCT FROM NEW.tenant)
  EXECUTE FUNCTION sonic_counts_row();
CREATE TRIGGER tasks_counts_delete AFTER DELETE ON tasks FOR EACH ROW
  EXECUTE FUNCTION sonic_counts_row();
CREATE TRIGGER tasks_release AFTER UPDATE OF status ON tasks FOR EACH ROW
  WHEN (NEW.status IN {FINAL} AND OLD.status NOT IN {FINAL})
  EXECUTE FUNCTION sonic_release();
"""

DROP_FUNCTIONS = """
DROP TRIGGER IF EXISTS tasks_release ON tasks;
DROP TRIGGER IF EXISTS tasks_counts_delete ON tasks;
DROP TRIGGER IF EXISTS tasks_counts_update ON tasks;
DROP TRIGGER IF EXISTS tasks_counts_insert ON tasks;
DROP FUNCTION IF EXISTS sonic_release();
DROP FUNCTION IF EXISTS sonic_counts_insert();
DROP FUNCTION IF EXISTS sonic_counts_row();
DROP FUNCTION IF EXISTS sonic_count(text, text, text, int);
DROP FUNCTION IF EXISTS sonic_key_head(text, bigint);
DROP FUNCTION IF EXISTS sonic_deps_ready(text);
DROP FUNCTION IF EXISTS sonic_rank(timestamptz, smallint);
"""


def _status_check(statuses: tuple[str, ...]) -> None:
    op.drop_constraint("tasks_status_valid", "tasks", type_="check")
    op.create_check_constraint("tasks_status_valid", "tasks",
                               "status IN (" + ", ".join(f"'{s}'" for s in statuses) + ")")


def upgrade() -> None:
    _status_check(STATUSES)
    op.add_column("tasks", sa.Column("seq", sa.BigInteger, sa.Identity(always=False),
                                     nullable=False))
    op.create_table(
        "task_dependencies",
        sa.Column("task_id", sa.String(128), sa.ForeignKey("tasks.task_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("depends_on", sa.String(128), primary_key=True),
    )
    op.create_index("ix_task_dependencies_depends_on", "task_dependencies", ["depends_on"])
    op.create_table(
        "tenants",
        sa.Column("topic", sa.String(249), primary_key=True),
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("weight", sa.Float, nullable=False, server_default="1"),
        sa.Column("runnable", sa.Integer, nullable=False, server_default="0"),
        sa.Column("waiting", sa.Integer, nullable=False, server_default="0"),
        sa.Column("inflight", sa.Integer, nullable=False, server_default="0"),
        sa.Column("picked_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("'-infinity'")),
        sa.CheckConstraint("weight > 0", name="tenants_weight_positive"),
    )
    op.execute(FUNCTIONS)
    op.create_index("ix_tenants_pick", "tenants",
                    ["topic", sa.text("(inflight / weight)"), "picked_at"],
                    postgresql_where=sa.text("runnable > 0"))
    op.create_index("ix_tasks_pick", "tasks",
                    ["kafka_topic", sa.text("coalesce(tenant, '')"),
                     sa.text("sonic_rank(received_at, priority)")],
                    postgresql_where=sa.text("status = 'received'"))
    op.create_index("ix_tasks_key_seq", "tasks", ["ordering_key", "seq"],
                    postgresql_where=sa.text(f"ordering_key IS NOT NULL AND status NOT IN {FINAL}"))
    op.create_index("ix_tasks_waiting", "tasks", ["received_at"],
                    postgresql_where=sa.text("status = 'waiting'"))
    op.create_index("ix_tasks_deadline", "tasks", ["deadline"],
                    postgresql_where=sa.text(
                        "deadline IS NOT NULL AND status IN ('received', 'waiting', 'queued')"))
    op.create_index("ix_tasks_inflight_stage", "tasks", ["kafka_topic", "stage"],
                    postgresql_where=sa.text("status IN ('queued', 'running')"))
    # Jobs the scheduler finished before they started, whose callback is owed.
    op.create_index("ix_tasks_owed_callback", "tasks", ["finished_at"],
                    postgresql_where=sa.text(NOTIFY_WHERE))
    # Counts for the jobs already there.
    op.execute("""
        INSERT INTO tenants (topic, tenant, runnable, waiting, inflight)
        SELECT coalesce(kafka_topic, ''), coalesce(tenant, ''),
               count(*) FILTER (WHERE status = 'received'),
               count(*) FILTER (WHERE status = 'waiting'),
               count(*) FILTER (WHERE status IN ('queued', 'running'))
        FROM tasks WHERE status IN ('received', 'waiting', 'queued', 'running') GROUP BY 1, 2""")


def downgrade() -> None:
    op.drop_index("ix_tasks_owed_callback", "tasks")
    op.drop_index("ix_tasks_inflight_stage", "tasks")
    op.drop_index("ix_tasks_deadline", "tasks")
    op.drop_index("ix_tasks_waiting", "tasks")
    op.drop_index("ix_tasks_key_seq", "tasks")
    op.drop_index("ix_tasks_pick", "tasks")
    op.drop_index("ix_tenants_pick", "tenants")
    op.execute(DROP_FUNCTIONS)
    op.drop_table("tenants")
    op.drop_index("ix_task_dependencies_depends_on", "task_dependencies")
    op.drop_table("task_dependencies")
    op.drop_column("tasks", "seq")
    op.execute("UPDATE tasks SET status = 'failed' WHERE status = 'expired'")
    _status_check(OLD_STATUSES)
