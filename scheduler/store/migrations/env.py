"""Alembic environment: runs on a connection handed in by ``scheduler.store.db.upgrade``."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from scheduler.store.db import COMPARE_OPTIONS, make_engine
from scheduler.store.tables import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            _migrate(conn)
        return
    _migrate(connection)


def _migrate(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        **COMPARE_OPTIONS,
    )
    context.run_migrations()


run()
