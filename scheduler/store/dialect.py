"""Dialect-specific INSERT with ON CONFLICT, so the same code runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
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


def in_list(dialect: str, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
    """``column IN (<the list bound as name>)`` as one fixed statement whatever the list's
    length: no per-execution rendering of an expanding IN (hot paths build the statement once;
    bind the list with :func:`list_param`). An array on PostgreSQL, a JSON array on SQLite."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam(name, type_=postgresql.ARRAY(sa.Integer)))
    values: sa.Select[Any] = sa.select(sa.column("value")).select_from(
        sa.func.json_each(sa.bindparam(name)))
    return column.in_(values.scalar_subquery())


def list_param(dialect: str, values: list[int]) -> Any:
    """The bound value for :func:`in_list`."""
    return values if dialect == "postgresql" else json.dumps(values)
