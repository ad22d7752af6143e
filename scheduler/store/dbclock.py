"""The database's clock, as SQL: liveness and leases are judged by it (ARCHITECTURE.md,
invariant 8).

Two nodes' clocks may disagree by seconds; the database's clock is the one they share. So a
heartbeat or a lease is stamped with the database's time *in the statement* and compared with
it *in the statement*: no node ever holds another's timestamp against its own clock.

PostgreSQL: ``statement_timestamp()`` (not ``now()``, which is frozen at the start of the
transaction). SQLite: ``strftime('%Y-%m-%d %H:%M:%f', 'now')``, which has milliseconds and
sorts as text against what ``UtcDateTime`` stores (naive UTC ISO text); on SQLite every
process is on one machine anyway.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from scheduler.store.types import UtcDateTime


class db_now(FunctionElement[datetime]):  # lower case: reads as the SQL function it is
    """The database's current time; ``db_now(-30)`` is 30 seconds ago, ``db_now(60)`` ahead."""

    type = UtcDateTime()
    inherit_cache = True

    def __init__(self, offset_s: float = 0.0) -> None:
        super().__init__(sa.literal(float(offset_s), sa.Float))


class age_s(FunctionElement[float]):
    """Seconds from ``column`` (a timestamp the database stamped) to the database's now."""

    type = sa.Float()
    inherit_cache = True

    def __init__(self, column: sa.ColumnElement[Any]) -> None:
        super().__init__(column)


def _offset(element: db_now) -> sa.ColumnElement[Any]:
    [offset] = element.clauses.clauses
    return offset  # type: ignore[return-value]


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    offset = compiler.process(_offset(element), **kw)
    return f"(statement_timestamp() + make_interval(secs => {offset}))"


@compiles(db_now, "sqlite")
def _sqlite_now(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    offset = compiler.process(_offset(element), **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({offset}) || ' seconds')"


@compiles(age_s, "postgresql")
def _pg_age(element: age_s, compiler: SQLCompiler, **kw: Any) -> str:
    [column] = element.clauses.clauses
    return f"EXTRACT(EPOCH FROM (statement_timestamp() - {compiler.process(column, **kw)}))"


@compiles(age_s, "sqlite")
def _sqlite_age(element: age_s, compiler: SQLCompiler, **kw: Any) -> str:
    [column] = element.clauses.clauses
    return f"((julianday('now') - julianday({compiler.process(column, **kw)})) * 86400.0)"


def now(conn: sa.Connection) -> datetime:
    """The database's time now (tests planting an old heartbeat or lease use it)."""
    value: datetime = conn.execute(sa.select(db_now())).scalar_one()
    return value
