"""tasks and task_events

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("received", "waiting", "queued", "running", "completed", "failed", "rejected",
            "cancelled")


def upgrade() -> None:
    jsonb_empty = sa.text("'{}'::jsonb")
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("kafka_topic", sa.String(249)),
        sa.Column("kafka_partition", sa.Integer),
        sa.Column("kafka_offset", sa.BigInteger),
        sa.Column("kafka_key", sa.Text),
        sa.Column("ordering_key", sa.Text),
        sa.Column("tenant", sa.String(128)),
        sa.Column("user_id", sa.String(128)),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default="5"),
        sa.Column("engine", sa.String(64)),
        sa.Column("depends_on", postgresql.ARRAY(sa.Text)),
        sa.Column("deadline", ts),
        sa.Column("status", sa.String(16), nullable=False, server_default="received"),
        sa.Column("stage", sa.String(32)),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("payload", postgresql.JSONB, nullable=False, server_default=jsonb_empty),
        sa.Column("config", postgresql.JSONB, nullable=False, server_default=jsonb_empty),
        sa.Column("received_at", ts, nullable=False, server_default=sa.func.now()),
        sa.Column("queued_at", ts),
        sa.Column("started_at", ts),
        sa.Column("finished_at", ts),
        sa.Column("updated_at", ts, nullable=False, server_default=sa.func.now()),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("result_url", sa.Text),
        sa.Column("result_key", sa.Text),
        sa.Column("callback_url", sa.Text),
        sa.Column("callback_status", sa.String(16)),
        sa.Column("callback_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_stage", sa.String(32)),
        sa.Column("lease_expires_at", ts),
        sa.Column("heartbeat_at", ts),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")",
            name="tasks_status_valid",
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 100", name="tasks_progress_range"),
    )
    op.create_index("ix_tasks_status_received", "tasks", ["status", "received_at"])
    op.create_index("ix_tasks_received_at", "tasks", ["received_at"])
    op.create_index("ix_tasks_finished_at", "tasks", ["finished_at"])
    op.create_index("ix_tasks_tenant_received", "tasks", ["tenant", "received_at"])
    op.create_index("ix_tasks_error_code", "tasks", ["error_code", "finished_at"],
                    postgresql_where=sa.text("error_code IS NOT NULL"))
    op.create_index("ix_tasks_ordering_key", "tasks",
                    ["ordering_key", "kafka_partition", "kafka_offset"],
                    postgresql_where=sa.text("ordering_key IS NOT NULL"))
    op.create_index("ix_tasks_lease_expiry", "tasks", ["lease_expires_at"],
                    postgresql_where=sa.text("lease_owner IS NOT NULL"))

    op.create_table(
        "task_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(128),
                  sa.ForeignKey("tasks.task_id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage", sa.String(32)),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("at", ts, nullable=False, server_default=sa.func.now()),
        sa.Column("duration_s", sa.Float),
        sa.Column("detail", postgresql.JSONB, nullable=False, server_default=jsonb_empty),
    )
    op.create_index("ix_task_events_task_at", "task_events", ["task_id", "at"])
    op.create_index("ix_task_events_at", "task_events", ["at"])
    op.create_index("ix_task_events_event_at", "task_events", ["event", "at"])


def downgrade() -> None:
    op.drop_table("task_events")
    op.drop_table("tasks")
