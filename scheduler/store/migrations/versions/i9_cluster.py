"""runs.lease_gen (the run's fencing token) and check_leases (one prober per check)

Revision ID: i9_cluster
Revises: i13_joins
Create Date: 2026-12-01 19:10:00.000000

Issue 9: a node whose run was adopted must not overwrite the adopter's outcome, so every run
status change is conditional on ``lease_gen``; each health check is probed by the one node
holding its row in ``check_leases``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import scheduler.store.types


revision = 'i9_cluster'
down_revision = 'i13_joins'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('check_leases',
    sa.Column('check_name', sa.String(length=200), nullable=False),
    sa.Column('node', sa.String(length=200), nullable=False),
    sa.Column('gen', sa.Integer(), server_default='1', nullable=False),
    sa.Column('expires_at', scheduler.store.types.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('check_name', name=op.f('pk_check_leases'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_gen', sa.Integer(), server_default='0',
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('lease_gen')
    op.drop_table('check_leases')
