"""The database's clock: what leases and liveness are judged by (ARCHITECTURE.md, invariant 8).

Two nodes' wall clocks are never compared. A lease or heartbeat written by one node and judged
by another is stamped and compared with the one clock they share, the database server's:
PostgreSQL's ``now()`` (the transaction's start) or ``statement_timestamp()``, SQLite's
``'now'`` (the one machine all processes on the file run on). :class:`DbTime` extends one
reading with the local monotonic clock, so a batch can stamp retry times without a query per
message.

Two ways to use it: read it (:func:`db_now`, :class:`DbTime`), or put it in the statement
(:class:`sql_now`, :class:`sql_age_s`), so that a row is stamped and judged by the database
without the value ever passing through a node. SQLite's form, ``strftime('%Y-%m-%d
%H:%M:%f', 'now')``, has milliseconds and sorts as text against what ``UtcDateTime`` stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from scheduler.clock import Clock, utc
from scheduler.store.types import UtcDateTime

_SQLITE_NOW = sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")
_PG_NOW = sa.text("SELECT now()")


def db_now(conn: sa.Connection) -> datetime:
    """The database server's current time, aware UTC."""
    if conn.dialect.name == "sqlite":
        text = conn.execute(_SQLITE_NOW).scalar_one()
        return datetime.strptime(str(text), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    value = conn.execute(_PG_NOW).scalar_one()
    assert isinstance(value, datetime)
    return utc(value)


@dataclass(frozen=True)
class DbTime:
    """One reading of the database clock, carried forward by the local monotonic clock."""

    at: datetime
    mono_s: float
    clock: Clock

    @classmethod
    def read(cls, conn: sa.Connection, clock: Clock) -> DbTime:
        return cls(db_now(conn), clock.monotonic(), clock)

    def now(self) -> datetime:
        return self.at + timedelta(seconds=max(0.0, self.clock.monotonic() - self.mono_s))


# -- the clock inside a statement -------------------------------------------------------------

class sql_now(FunctionElement[datetime]):  # lower case: reads as the SQL function it is
    """The database's time as the statement runs; ``sql_now(-30)`` is 30 s ago, ``(60)``
    a minute ahead."""

    type = UtcDateTime()
    inherit_cache = True

    def __init__(self, offset_s: float = 0.0) -> None:
        super().__init__(sa.literal(float(offset_s), sa.Float))


class sql_age_s(FunctionElement[float]):
    """Seconds from ``column`` (a timestamp the database stamped) to the database's now."""

    type = sa.Float()
    inherit_cache = True

    def __init__(self, column: sa.ColumnElement[Any]) -> None:
        super().__init__(column)


def _only(element: FunctionElement[Any]) -> sa.ColumnElement[Any]:
    [clause] = element.clauses.clauses
    return clause  # type: ignore[return-value]


@compiles(sql_now, "postgresql")
def _pg_now(element: sql_now, compiler: SQLCompiler, **kw: Any) -> str:
    offset = compiler.process(_only(element), **kw)
    return f"(statement_timestamp() + make_interval(secs => {offset}))"


@compiles(sql_now, "sqlite")
def _sqlite_now(element: sql_now, compiler: SQLCompiler, **kw: Any) -> str:
    offset = compiler.process(_only(element), **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({offset}) || ' seconds')"


@compiles(sql_age_s, "postgresql")
def _pg_age(element: sql_age_s, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(_only(element), **kw)
    return f"EXTRACT(EPOCH FROM (statement_timestamp() - {column}))"


@compiles(sql_age_s, "sqlite")
def _sqlite_age(element: sql_age_s, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(_only(element), **kw)
    return f"((julianday('now') - julianday({column})) * 86400.0)"
