"""tenant counts per statement: one ``tenants`` update per tenant per statement

Migration 0003 kept ``tenants`` counts with row-level update and delete triggers: a
statement that changed many jobs of one tenant (the upkeep expiring past-deadline jobs, a
bulk cancel, housekeeping deletes) updated the same ``tenants`` row once per job, each
update chaining a new row version; the time grew with the square of the rows (a
100,000-row delete took minutes) and the table bloated.

Now updates and deletes are counted like inserts already were: statement-level triggers
with transition tables, the deltas summed per (topic, tenant), one ``INSERT ... ON
CONFLICT DO UPDATE`` per tenant per statement, tenants locked in (topic, tenant) order.
The counts are the same: ``runnable`` = ``received``, ``waiting`` = ``waiting``,
``inflight`` = ``queued``/``running``; a job whose status, tenant or topic changed leaves
its old count and joins its new one (the row triggers ignored a topic-only change; nothing
moves jobs between topics, and the counts now always equal a recount); a job going from
``received`` to ``queued`` sets its tenant's ``picked_at``. A tenant whose deltas sum to
zero (``queued`` -> ``running``) is not touched. Transition tables cannot name columns
(``UPDATE OF``), so the update trigger runs for every update of ``tasks``; statements
that change no status, tenant nor topic (progress, leases) leave after one small check.

Downgrade restores the row-level triggers of 0003.

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

COUNTED = "('received', 'waiting', 'queued', 'running')"

STATEMENT_TRIGGERS = f"""
DROP TRIGGER tasks_counts_update ON tasks;
DROP TRIGGER tasks_counts_delete ON tasks;
DROP FUNCTION sonic_counts_row();
DROP FUNCTION sonic_count(text, text, text, int);

CREATE FUNCTION sonic_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Most updates (progress, leases, stages) move no job between counts.
  IF NOT EXISTS (
      SELECT 1 FROM old_rows o LEFT JOIN new_rows n ON n.task_id = o.task_id
      WHERE n.task_id IS NULL OR o.status IS DISTINCT FROM n.status
         OR o.tenant IS DISTINCT FROM n.tenant OR o.kafka_topic IS DISTINCT FROM n.kafka_topic)
  THEN
    RETURN NULL;
  END IF;
  INSERT INTO tenants AS t (topic, tenant, runnable, waiting, inflight, picked_at)
  SELECT topic, tenant, sum(r), sum(w), sum(i),
         CASE WHEN bool_or(picked) THEN clock_timestamp() ELSE '-infinity' END
  FROM (
    SELECT coalesce(kafka_topic, '') AS topic, coalesce(tenant, '') AS tenant,
           (status = 'received')::int AS r, (status = 'waiting')::int AS w,
           (status IN ('queued', 'running'))::int AS i, false AS picked
    FROM new_rows WHERE status IN {COUNTED}
    UNION ALL
    SELECT coalesce(kafka_topic, ''), coalesce(tenant, ''),
           -(status = 'received')::int, -(status = 'waiting')::int,
           -(status IN ('queued', 'running'))::int, false
    FROM old_rows WHERE status IN {COUNTED}
    UNION ALL
    -- Served just now: the next pick prefers the other tenants of the same load.
    SELECT coalesce(n.kafka_topic, ''), coalesce(n.tenant, ''), 0, 0, 0, true
    FROM old_rows o JOIN new_rows n ON n.task_id = o.task_id
    WHERE o.status = 'received' AND n.status = 'queued'
  ) d
  GROUP BY topic, tenant
  HAVING sum(r) <> 0 OR sum(w) <> 0 OR sum(i) <> 0 OR bool_or(picked)
  ORDER BY topic, tenant
  ON CONFLICT (topic, tenant) DO UPDATE SET
    runnable = t.runnable + excluded.runnable, waiting = t.waiting + excluded.waiting,
    inflight = t.inflight + excluded.inflight,
    picked_at = CASE WHEN excluded.picked_at = '-infinity' THEN t.picked_at
                     ELSE excluded.picked_at END;
  RETURN NULL;
END $$;

CREATE FUNCTION sonic_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO tenants AS t (topic, tenant, runnable, waiting, inflight)
  SELECT coalesce(kafka_topic, ''), coalesce(tenant, ''),
         -count(*) FILTER (WHERE status = 'received'),
         -count(*) FILTER (WHERE status = 'waiting'),
         -count(*) FILTER (WHERE status IN ('queued', 'running'))
  FROM old_rows WHERE status IN {COUNTED}
  GROUP BY 1, 2
  ORDER BY 1, 2
  ON CONFLICT (topic, tenant) DO UPDATE SET
    runnable = t.runnable + excluded.runnable, waiting = t.waiting + excluded.waiting,
    inflight = t.inflight + excluded.inflight;
  RETURN NULL;
END $$;

CREATE TRIGGER tasks_counts_update AFTER UPDATE ON tasks
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION sonic_counts_update();
CREATE TRIGGER tasks_counts_delete AFTER DELETE ON tasks
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION sonic_counts_delete();
"""

#: The row-level triggers of 0003, as they were.
ROW_TRIGGERS = """
DROP TRIGGER tasks_counts_update ON tasks;
DROP TRIGGER tasks_counts_delete ON tasks;
DROP FUNCTION sonic_counts_update();
DROP FUNCTION sonic_counts_delete();

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

CREATE TRIGGER tasks_counts_update AFTER UPDATE OF status, tenant ON tasks FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.tenant IS DISTINCT FROM NEW.tenant)
  EXECUTE FUNCTION sonic_counts_row();
CREATE TRIGGER tasks_counts_delete AFTER DELETE ON tasks FOR EACH ROW
  EXECUTE FUNCTION sonic_counts_row();
"""


def upgrade() -> None:
    op.execute(STATEMENT_TRIGGERS)


def downgrade() -> None:
    op.execute(ROW_TRIGGERS)
