"""per-recipient due times and structured check findings (issue 13)

Revision ID: i13_joins
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.store.types

revision = "i13_joins"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", scheduler.store.types.UtcDateTime(timezone=True),
                                      nullable=True))
    with op.batch_alter_table("check_results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("findings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("check_results", schema=None) as batch_op:
        batch_op.drop_column("findings")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("due_at")
