"""delivery leases: delivery_claims (fencing tokens), deliveries.claim_id and on_wire (issue 9)

Revision ID: i9_ledger
Revises: i9_cluster
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.store.types

revision = "i9_ledger"
down_revision = "i11_reports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delivery_claims",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("claimed_at", scheduler.store.types.UtcDateTime(timezone=True),
                  nullable=False),
        sa.Column("expires_at", scheduler.store.types.UtcDateTime(timezone=True),
                  nullable=False),
        sa.Column("deadline", scheduler.store.types.UtcDateTime(timezone=True),
                  nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_claims")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_delivery_claims_run_id"), "delivery_claims", ["run_id"],
                    unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("on_wire", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("on_wire")
        batch_op.drop_column("claim_id")
    op.drop_index(op.f("ix_delivery_claims_run_id"), table_name="delivery_claims")
    op.drop_table("delivery_claims")
