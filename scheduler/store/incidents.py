"""Incidents: each stretch of time a check's verdict was ``down`` (opened and closed by the
guard in the same transaction as its pause decisions; read by reports)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from scheduler.store.tables import incidents


def open_incident(conn: sa.Connection, check: str, at: datetime, *, detail: str | None,
                  campaigns: Sequence[str]) -> None:
    """Start an incident unless one is already open for ``check`` (a restart, two nodes)."""
    still_open = conn.execute(sa.select(incidents.c.id).where(
        incidents.c.check_name == check, incidents.c.ended_at.is_(None)).limit(1)).first()
    if still_open is None:
        conn.execute(sa.insert(incidents).values(
            check_name=check, started_at=at, detail=(detail or "")[:1000],
            campaigns=sorted(campaigns)))


def close_incident(conn: sa.Connection, check: str, at: datetime) -> int:
    """End every open incident of ``check`` at ``at``; return how many."""
    result = conn.execute(sa.update(incidents).where(
        incidents.c.check_name == check, incidents.c.ended_at.is_(None)).values(ended_at=at))
    return int(result.rowcount or 0)
