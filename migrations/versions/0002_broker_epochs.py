"""broker_epochs: the Redis run_id the reconciler last handled, per topic

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "broker_epochs",
        sa.Column("topic", sa.String(249), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
    )


def downgrade() -> None:
    op.drop_table("broker_epochs")
