"""The suppression list: addresses never mailed again (unsubscribed, hard-bounced, too many
soft bounces, a spam complaint, or suppressed by hand)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa

from scheduler.store import signals
from scheduler.store.dialect import insert_for
from scheduler.store.tables import suppressions

# forgotten: the row is a keyed hash of the address (scheduler/privacy.py)
REASONS = ("unsubscribed", "hard_bounce", "soft_bounce", "complaint", "manual", "forgotten")


def add(conn: sa.Connection, email: str, reason: str, now: datetime, *,
        campaign: str | None = None, detail: str | None = None) -> bool:
    """Suppress ``email`` (lower-cased); True if it was not suppressed before. A new
    suppression wakes every node's senders at commit (``signals``)."""
    if reason not in REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    stmt = insert_for(conn, suppressions).values(
        email=email.strip().lower(), reason=reason, at=now, campaign=campaign, detail=detail,
    ).on_conflict_do_nothing().returning(suppressions.c.email)
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT through SQLAlchemy.
    added = conn.execute(stmt).first() is not None
    if added:
        signals.notify(conn, signals.SUPPRESSIONS)
    return added


def remove(conn: sa.Connection, email: str) -> bool:
    result = conn.execute(sa.delete(suppressions).where(
        suppressions.c.email == email.strip().lower()))
    return bool(result.rowcount)


def is_suppressed(conn: sa.Connection, email: str) -> bool:
    stmt = sa.select(sa.literal(1)).where(suppressions.c.email == email.strip().lower())
    return conn.execute(stmt).first() is not None


def suppressed_among(conn: sa.Connection, emails: Collection[str]) -> set[str]:
    """Which of ``emails`` (lower-cased, as the ledger stores them) are suppressed now.

    The one query a delivery claim makes against the suppression list (issue 9, point 3): a
    new form of suppression (e.g. a keyed hash of a forgotten address) extends this query,
    and every claim honours it.
    """
    if not emails:
        return set()
    stmt = sa.select(suppressions.c.email).where(suppressions.c.email.in_(list(emails)))
    return set(conn.execute(stmt).scalars())


def reason_of(conn: sa.Connection, email: str) -> str | None:
    stmt = sa.select(suppressions.c.reason).where(suppressions.c.email == email.strip().lower())
    row = conn.execute(stmt).first()
    return str(row[0]) if row else None


def count(conn: sa.Connection) -> dict[str, int]:
    stmt = sa.select(suppressions.c.reason, sa.func.count()).group_by(suppressions.c.reason)
    return {row[0]: int(row[1]) for row in conn.execute(stmt)}
