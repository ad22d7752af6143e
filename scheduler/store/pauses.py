"""Pause reasons (ARCHITECTURE.md, invariant 4): a campaign sends only while it has none."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from scheduler.store import signals
from scheduler.store.dialect import insert_for
from scheduler.store.tables import pauses, tracking_events

MANUAL = "manual"
ERROR_BUDGET = "error_budget"
SMTP_UNREACHABLE = "smtp_unreachable"
BROKEN_LINKS = "broken_links"  # a newsletter's pre-send link check found broken links
SMTP_AUTH_FAILED = "smtp_auth_failed"  # a 535: not retried until the credentials change


def guard_reason(check: str) -> str:
    return f"guard:{check}"


def maintenance_reason(window: str) -> str:
    return f"maintenance:{window}"


@dataclass(frozen=True)
class Pause:
    campaign: str
    reason: str
    detail: str | None
    since: datetime
    by: str | None


def add(conn: sa.Connection, campaign: str, reason: str, now: datetime, *,
        detail: str | None = None, by: str | None = None) -> bool:
    """Add a pause reason; return True if it is new. Records a ``paused`` tracking event and
    wakes every node's senders at commit (``signals``)."""
    stmt = insert_for(conn, pauses).values(
        campaign=campaign, reason=reason, detail=detail, since=now, by=by
    ).on_conflict_do_nothing().returning(pauses.c.campaign)
    # RETURNING, not rowcount: psycopg reports rowcount -1 for INSERT … ON CONFLICT here.
    added = conn.execute(stmt).first() is not None
    if added:
        signals.notify(conn, signals.PAUSES)
        conn.execute(sa.insert(tracking_events).values(
            at=now, kind="paused", campaign=campaign, detail=f"{reason}: {detail or ''}".strip()))
    return added


def remove(conn: sa.Connection, campaign: str, reason: str, now: datetime) -> bool:
    """Remove a pause reason; return True if it was there. Records a ``resumed`` event and
    wakes every node's held runs at commit (``signals``)."""
    result = conn.execute(
        sa.delete(pauses).where(pauses.c.campaign == campaign, pauses.c.reason == reason)
    )
    removed = result.rowcount > 0
    if removed:
        signals.notify(conn, signals.PAUSES)
        conn.execute(sa.insert(tracking_events).values(
            at=now, kind="resumed", campaign=campaign, detail=reason))
    return removed


def reasons(conn: sa.Connection, campaign: str) -> list[Pause]:
    stmt = sa.select(pauses).where(pauses.c.campaign == campaign).order_by(pauses.c.since)
    return [Pause(**row._mapping) for row in conn.execute(stmt)]


def is_paused(conn: sa.Connection, campaign: str) -> bool:
    stmt = sa.select(sa.literal(1)).where(pauses.c.campaign == campaign).limit(1)
    return conn.execute(stmt).first() is not None


def paused_among(conn: sa.Connection, campaigns: Iterable[str]) -> set[str]:
    """Which of ``campaigns`` have a pause reason now (one query for a whole claim batch)."""
    names = sorted(set(campaigns))
    if not names:
        return set()
    stmt = sa.select(pauses.c.campaign).distinct().where(pauses.c.campaign.in_(names))
    return {row[0] for row in conn.execute(stmt)}


def all_reasons(conn: sa.Connection) -> dict[str, list[Pause]]:
    out: dict[str, list[Pause]] = {}
    for row in conn.execute(sa.select(pauses).order_by(pauses.c.since)):
        out.setdefault(row.campaign, []).append(Pause(**row._mapping))
    return out


def campaigns_with_reason(conn: sa.Connection, reason: str) -> list[str]:
    stmt = sa.select(pauses.c.campaign).where(pauses.c.reason == reason)
    return [row[0] for row in conn.execute(stmt)]
