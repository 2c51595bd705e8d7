"""status outbox: a status event per state change of a job, written by triggers

- ``status_outbox``: one row per status event, in the transaction of the change it tells
  (so it is as durable as the change, and never blocks nor fails it); ``id`` grows in
  commit order per task, ``seq`` counts a task's events 1, 2, 3 ...; ``body`` is the event
  (schema version 1, README "Status events"); ``published_at`` is set by the relay once
  Kafka has the event;
- triggers feed it from every writer: jobs inserted (``admitted``, ``rejected``), status
  changes (``waiting``, ``released``, ``queued``, ``running``, the five final ones),
  progress (``progress``, at most one per second per task) and the stage events of
  ``task_events`` (``stage_started``, ``stage_succeeded``, ``stage_failed``, ...).

Per-task order: every insert for a task happens while its ``tasks`` row is locked (an
UPDATE holds it; the ``task_events`` trigger takes it ``FOR NO KEY UPDATE``), so a task's
next event gets its id only after the transaction of the previous one committed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FINAL = "('completed', 'failed', 'rejected', 'cancelled', 'expired')"
#: ``task_events`` kinds that become status events (as ``stage_<kind>``); the others are
#: told by a status change already (admitted, rejected, cancelled) or are bookkeeping.
STAGE_EVENTS = ("('started', 'succeeded', 'failed', 'retrying', 'requeued', 'lease_lost', "
                "'waiting_for_credential', 'credential_acquired')")

FUNCTIONS = f"""
-- The event body (schema version 1): the task as it is now, told as ``event``.
CREATE FUNCTION sonic_status_body(t tasks, event text, stage text, at timestamptz,
                                  duration_s double precision, detail jsonb)
RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'schema_version', 1,
    'task_id', t.task_id,
    'event', event,
    'status', t.status,
    'stage', coalesce(stage, t.stage),
    'progress', CASE WHEN t.status = 'completed' THEN 1.0::float8
                     ELSE round((t.progress / 100.0)::numeric, 4)::float8 END,
    'attempt', t.attempts,
    'at', at,
    'error', CASE
        WHEN detail ? 'code' THEN jsonb_build_object('code', detail->>'code',
                                                     'message', detail->>'message')
        WHEN stage IS NULL AND t.error_code IS NOT NULL AND t.status IN {FINAL}
        THEN jsonb_build_object('code', t.error_code, 'message', t.error_message) END,
    'timings', jsonb_build_object(
        'received_at', t.received_at, 'queued_at', t.queued_at,
        'started_at', t.started_at, 'finished_at', t.finished_at,
        'duration_s', duration_s),
    'video_url', CASE WHEN t.status = 'completed' THEN t.result_url END,
    'tenant', t.tenant,
    'detail', CASE WHEN detail IS NULL THEN NULL
                   ELSE detail - 'code' - 'message' - 'traceback' END) $$;

-- The task's next event number (call with its row locked).
CREATE FUNCTION sonic_status_seq(job text) RETURNS bigint LANGUAGE sql STABLE AS $$
  SELECT coalesce((SELECT seq FROM status_outbox WHERE task_id = job
                   ORDER BY id DESC LIMIT 1), 0) + 1 $$;

-- Jobs inserted (admission, rejects at the door): one statement, many rows.
CREATE FUNCTION sonic_status_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO status_outbox (task_id, topic, seq, event, body)
  SELECT t.task_id, coalesce(t.kafka_topic, ''), sonic_status_seq(t.task_id), e.name,
         sonic_status_body(t, e.name, NULL, clock_timestamp(), NULL, NULL)
  FROM new_rows n JOIN tasks t ON t.task_id = n.task_id
  CROSS JOIN LATERAL (SELECT CASE WHEN t.status = 'rejected' THEN 'rejected'
                                  ELSE 'admitted' END AS name) e
  ORDER BY t.seq;
  RETURN NULL;
END $$;

-- A status change, or progress (throttled: one progress event per second per task).
CREATE FUNCTION sonic_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  name text;
BEGIN
  IF NEW.status IS DISTINCT FROM OLD.status THEN
    name := CASE WHEN NEW.status = 'received' THEN 'released' ELSE NEW.status END;
  ELSIF NEW.status IN {FINAL} OR EXISTS (
      SELECT 1 FROM (SELECT created_at FROM status_outbox
                     WHERE task_id = NEW.task_id AND event = 'progress'
                     ORDER BY id DESC LIMIT 1) last
      WHERE last.created_at > clock_timestamp() - interval '1 second') THEN
    RETURN NULL;
  ELSE
    name := 'progress';
  END IF;
  INSERT INTO status_outbox (task_id, topic, seq, event, body)
  VALUES (NEW.task_id, coalesce(NEW.kafka_topic, ''), sonic_status_seq(NEW.task_id), name,
          sonic_status_body(NEW, name, NULL, clock_timestamp(), NULL, NULL));
  RETURN NULL;
END $$;

-- Stage events from task_events: the task rows are locked first (in task order), so a
-- task's events are numbered and committed one transaction after the other.
CREATE FUNCTION sonic_status_stage_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM tasks WHERE task_id IN (
      SELECT task_id FROM new_rows WHERE event IN {STAGE_EVENTS})
    ORDER BY task_id FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  INSERT INTO status_outbox (task_id, topic, seq, event, body)
  SELECT t.task_id, coalesce(t.kafka_topic, ''),
         sonic_status_seq(t.task_id) - 1
           + row_number() OVER (PARTITION BY n.task_id ORDER BY n.id),
         'stage_' || n.event,
         sonic_status_body(t, 'stage_' || n.event, coalesce(n.stage, t.stage), n.at,
                           n.duration_s, n.detail)
  FROM new_rows n JOIN tasks t ON t.task_id = n.task_id
  WHERE n.event IN {STAGE_EVENTS}
  ORDER BY n.id;
  RETURN NULL;
END $$;

CREATE TRIGGER tasks_status_inserted AFTER INSERT ON tasks
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION sonic_status_inserted();
CREATE TRIGGER tasks_status_changed AFTER UPDATE OF status, progress ON tasks FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress)
  EXECUTE FUNCTION sonic_status_changed();
CREATE TRIGGER task_events_status AFTER INSERT ON task_events
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
  EXECUTE FUNCTION sonic_status_stage_events();
"""

DROP_FUNCTIONS = """
DROP TRIGGER IF EXISTS task_events_status ON task_events;
DROP TRIGGER IF EXISTS tasks_status_changed ON tasks;
DROP TRIGGER IF EXISTS tasks_status_inserted ON tasks;
DROP FUNCTION IF EXISTS sonic_status_stage_events();
DROP FUNCTION IF EXISTS sonic_status_changed();
DROP FUNCTION IF EXISTS sonic_status_inserted();
DROP FUNCTION IF EXISTS sonic_status_seq(text);
DROP FUNCTION IF EXISTS sonic_status_body(tasks, text, text, timestamptz, double precision,
                                          jsonb);
"""


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "status_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("topic", sa.String(249), nullable=False, server_default=""),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("body", postgresql.JSONB, nullable=False),
        sa.Column("created_at", ts, nullable=False, server_default=sa.func.clock_timestamp()),
        sa.Column("published_at", ts),
    )
    # The relay's queue: a topic's unpublished events in id order.
    op.create_index("ix_status_outbox_pending", "status_outbox", ["topic", "id"],
                    postgresql_where=sa.text("published_at IS NULL"))
    # A task's events (Server-Sent Events resume after an id; the next seq).
    op.create_index("ix_status_outbox_task", "status_outbox", ["task_id", "id"])
    # Pruning published events past their retention.
    op.create_index("ix_status_outbox_published", "status_outbox", ["topic", "published_at"],
                    postgresql_where=sa.text("published_at IS NOT NULL"))
    op.execute(FUNCTIONS)


def downgrade() -> None:
    op.execute(DROP_FUNCTIONS)
    op.drop_index("ix_status_outbox_published", "status_outbox")
    op.drop_index("ix_status_outbox_task", "status_outbox")
    op.drop_index("ix_status_outbox_pending", "status_outbox")
    op.drop_table("status_outbox")
