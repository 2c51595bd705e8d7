"""ordering keys per topic; no start time on jobs that never ran

- An ``ordering_key`` orders the jobs of one task topic (README, "The dispatcher"): the
  default key is the Kafka key, and "in offset order" has a meaning inside a topic only.
  Migration 0003 matched keys over every topic, so two unrelated producers on two topics
  using the same key held each other's jobs. Now ``sonic_key_head(topic, key, seq)``
  replaces ``sonic_key_head(key, seq)``, and the release trigger (``sonic_release``), when
  a job becomes final, releases the next job of its key in its own topic.
- The callback stage of a job that never ran (cancelled, expired, refused before a stage
  started) used to set ``started_at`` when it took its lease; it no longer does
  (``pipeline/state/leases.py``). Rows it set are repaired: such a start came after the
  job had finished, which a real start never does.

Revision ID: 0011
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None

FINAL = "('completed', 'failed', 'rejected', 'cancelled', 'expired')"


def _release(same_topic: str) -> str:
    """``sonic_release()`` of migration 0003, its next-job-of-the-key lookup narrowed by
    ``same_topic`` (empty: over every topic, as 0003 had it) and its dependents' key check
    by ``head`` (the key-head call)."""
    head = ("sonic_key_head(t.kafka_topic, t.ordering_key, t.seq)" if same_topic
            else "sonic_key_head(t.ordering_key, t.seq)")
    return f"""
CREATE OR REPLACE FUNCTION sonic_release() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  nxt tasks%ROWTYPE;
BEGIN
  IF NEW.status = 'completed' THEN
    UPDATE tasks t SET status = 'received', updated_at = now()
    WHERE t.status = 'waiting'
      AND t.task_id IN (SELECT d.task_id FROM task_dependencies d WHERE d.depends_on = NEW.task_id)
      AND sonic_deps_ready(t.task_id) AND {head};
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
    WHERE ordering_key = NEW.ordering_key AND status NOT IN {FINAL}{same_topic}
    ORDER BY seq LIMIT 1;
    IF FOUND AND nxt.status = 'waiting' AND sonic_deps_ready(nxt.task_id) THEN
      UPDATE tasks SET status = 'received', updated_at = now() WHERE task_id = nxt.task_id;
    END IF;
  END IF;
  RETURN NULL;
END $$;
"""


KEY_HEAD = f"""
CREATE FUNCTION sonic_key_head(topic text, key text, job_seq bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT key IS NULL OR NOT EXISTS (
    SELECT 1 FROM tasks o WHERE o.ordering_key = key AND o.seq < job_seq
      AND o.kafka_topic IS NOT DISTINCT FROM topic AND o.status NOT IN {FINAL}) $$;
"""

KEY_HEAD_0003 = f"""
CREATE FUNCTION sonic_key_head(key text, job_seq bigint) RETURNS boolean LANGUAGE sql STABLE AS $$
  SELECT key IS NULL OR NOT EXISTS (
    SELECT 1 FROM tasks o WHERE o.ordering_key = key AND o.seq < job_seq
      AND o.status NOT IN {FINAL}) $$;
"""

#: Set by the callback stage after the job had finished: it never started.
REPAIR_STARTED = """
UPDATE tasks SET started_at = NULL
WHERE started_at IS NOT NULL AND finished_at IS NOT NULL AND started_at > finished_at"""


def upgrade() -> None:
    op.execute(KEY_HEAD)
    op.execute(_release("\n      AND kafka_topic IS NOT DISTINCT FROM NEW.kafka_topic"))
    op.execute("DROP FUNCTION sonic_key_head(text, bigint)")
    op.execute(REPAIR_STARTED)


def downgrade() -> None:
    op.execute(KEY_HEAD_0003)
    op.execute(_release(""))
    op.execute("DROP FUNCTION sonic_key_head(text, text, bigint)")
