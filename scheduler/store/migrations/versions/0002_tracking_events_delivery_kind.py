"""tracking_events: index on (delivery_id, kind)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 18:40:00.000000

Commit ec9a2e9 added this index by rewriting the already-shipped 0001, so databases created
before it never got it. It lives here now, and 0001 is back to what first shipped.

``if_not_exists``: databases created from the rewritten 0001 (between ec9a2e9 and this
revision) already have the index and are stamped 0001 too; a plain CREATE INDEX would fail
on them. Both SQLite and PostgreSQL support CREATE INDEX IF NOT EXISTS.
"""

from __future__ import annotations

from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_tracking_events_delivery_kind', 'tracking_events',
                    ['delivery_id', 'kind'], unique=False, if_not_exists=True)


def downgrade() -> None:
    op.drop_index('ix_tracking_events_delivery_kind', table_name='tracking_events')
