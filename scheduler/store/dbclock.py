"""The database's clock: what leases are judged by (ARCHITECTURE.md, invariant 8).

Two nodes' wall clocks are never compared. A lease written by one node and judged by another
is stamped and compared with the one clock they share, the database server's: PostgreSQL's
``now()`` (the transaction's start), SQLite's ``'now'`` (the one machine all processes on the
file run on). :class:`DbTime` extends one reading with the local monotonic clock, so a batch
can stamp retry times without a query per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from scheduler.clock import Clock, utc

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
