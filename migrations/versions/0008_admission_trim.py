"""admission trim: an unused index dropped, one made partial, the inserted-jobs status trigger
without a per-row function call

What a job's admission writes per row, beyond the row itself, and what changed:

- ``ix_tasks_ordering_key`` (ordering_key, kafka_partition, kafka_offset) is dropped: every
  query on an ordering key asks for its jobs not final in ``seq`` order (admission's hold,
  ``sonic_key_head``, the release trigger, the console's predecessor), which
  ``ix_tasks_key_seq`` serves; nothing read this one;
- ``ix_tasks_finished_at`` holds only finished jobs (``WHERE finished_at IS NOT NULL``):
  every query on it bounds ``finished_at`` (a bound implies NOT NULL, so the planner still
  uses it), and an admitted job, not finished, no longer adds an entry;
- ``sonic_status_inserted`` (the ``admitted`` / ``rejected`` status events of inserted jobs)
  reads the inserted rows from the transition table instead of looking each one up again
  in ``tasks``, and finds each task's previous event number with one index probe instead of
  a call of ``sonic_status_seq`` per row (a SQL function with a subquery is never inlined).
  Same rows: a task's event numbers go on from its last one (a job deleted and admitted
  again), ids in admission order, the body from ``sonic_status_body``.

Measured on 2 cores, 1,000-row admission batches: the status trigger ~29 -> ~19 us a row.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INSERTED = """
CREATE OR REPLACE FUNCTION sonic_status_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO status_outbox (task_id, topic, seq, event, body)
  SELECT n.task_id, coalesce(n.kafka_topic, ''), coalesce(last.seq, 0) + 1, e.name,
         sonic_status_body(n::tasks, e.name, NULL, clock_timestamp(), NULL, NULL)
  FROM new_rows n
  CROSS JOIN LATERAL (SELECT CASE WHEN n.status = 'rejected' THEN 'rejected'
                                  ELSE 'admitted' END AS name) e
  LEFT JOIN LATERAL (SELECT o.seq FROM status_outbox o WHERE o.task_id = n.task_id
                     ORDER BY o.id DESC LIMIT 1) last ON true
  ORDER BY n.seq;
  RETURN NULL;
END $$;
"""

#: The function of 0004, as it was.
INSERTED_0004 = """
CREATE OR REPLACE FUNCTION sonic_status_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""


def upgrade() -> None:
    op.drop_index("ix_tasks_ordering_key", "tasks")
    op.drop_index("ix_tasks_finished_at", "tasks")
    op.create_index("ix_tasks_finished_at", "tasks", ["finished_at"],
                    postgresql_where=sa.text("finished_at IS NOT NULL"))
    op.execute(INSERTED)


def downgrade() -> None:
    op.execute(INSERTED_0004)
    op.drop_index("ix_tasks_finished_at", "tasks")
    op.create_index("ix_tasks_finished_at", "tasks", ["finished_at"])
    op.create_index("ix_tasks_ordering_key", "tasks",
                    ["ordering_key", "kafka_partition", "kafka_offset"],
                    postgresql_where=sa.text("ordering_key IS NOT NULL"))
