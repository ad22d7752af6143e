"""Dialect-specific INSERT with ON CONFLICT, so the same code runs on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


def insert_for(conn: sa.Connection, table: sa.Table) -> Any:
    """An INSERT supporting ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect {conn.dialect.name}")


def skip_locked(conn: sa.Connection, select: sa.Select[Any]) -> sa.Select[Any]:
    """Rows claimed by another node are skipped on PostgreSQL (ARCHITECTURE.md, invariant 8).

    SQLite has one writer at a time (``BEGIN IMMEDIATE``), which gives the same exclusivity.
    """
    if conn.dialect.name == "postgresql":
        return select.with_for_update(skip_locked=True)
    return select
