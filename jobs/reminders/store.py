"""Database access for reminders: posts marked done, pause history, reminder runs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from scheduler.store.dialect import insert_for
from scheduler.store.tables import posts_done, runs, tracking_events


def mark_done(conn: sa.Connection, campaign: str, post_id: str, now: datetime,
              by: str | None = None) -> bool:
    """Record a post as done; return False if it already was. Adds a ``posted`` event."""
    stmt = insert_for(conn, posts_done).values(
        campaign=campaign, post_id=post_id, done_at=now, by=by
    ).on_conflict_do_nothing().returning(posts_done.c.post_id)
    # RETURNING, not rowcount: psycopg reports rowcount -1 for INSERT … ON CONFLICT.
    added = conn.execute(stmt).first() is not None
    if added:
        event(conn, "posted", campaign, now, detail=post_id)
    return added


def done_at(conn: sa.Connection, campaign: str, post_id: str) -> datetime | None:
    stmt = sa.select(posts_done.c.done_at).where(posts_done.c.campaign == campaign,
                                                 posts_done.c.post_id == post_id)
    value = conn.execute(stmt).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


def done_ids(conn: sa.Connection, campaign: str) -> dict[str, datetime]:
    stmt = sa.select(posts_done.c.post_id, posts_done.c.done_at).where(
        posts_done.c.campaign == campaign)
    return {row.post_id: row.done_at for row in conn.execute(stmt)}


def event(conn: sa.Connection, kind: str, campaign: str, now: datetime, *,
          run_id: int | None = None, url: str | None = None, detail: str | None = None,
          recipient: str | None = None) -> None:
    conn.execute(sa.insert(tracking_events).values(
        at=now, kind=kind, campaign=campaign, run_id=run_id, url=url, detail=detail,
        recipient=recipient))


def has_event(conn: sa.Connection, kind: str, run_id: int) -> bool:
    stmt = sa.select(sa.literal(1)).where(tracking_events.c.kind == kind,
                                          tracking_events.c.run_id == run_id).limit(1)
    return conn.execute(stmt).first() is not None


@dataclass(frozen=True)
class PauseEvent:
    at: datetime
    kind: str  # paused | resumed
    detail: str


def pause_history(conn: sa.Connection, campaign: str, until: datetime) -> list[PauseEvent]:
    """Paused/resumed events of the campaign up to ``until``, oldest first (last 50)."""
    stmt = (
        sa.select(tracking_events.c.at, tracking_events.c.kind, tracking_events.c.detail)
        .where(tracking_events.c.campaign == campaign,
               tracking_events.c.kind.in_(("paused", "resumed")),
               tracking_events.c.at <= until)
        .order_by(tracking_events.c.at.desc(), tracking_events.c.id.desc()).limit(50)
    )
    rows = [PauseEvent(r.at, r.kind, r.detail or "") for r in conn.execute(stmt)]
    return rows[::-1]


@dataclass(frozen=True)
class RunState:
    id: int
    status: str
    detail: str | None


def run_states(conn: sa.Connection, keys: Iterable[str]) -> dict[tuple[str, str], RunState]:
    """Reminder runs by (schedule key, local slot)."""
    keys = list(keys)
    out: dict[tuple[str, str], RunState] = {}
    for start in range(0, len(keys), 500):
        stmt = sa.select(runs.c.id, runs.c.schedule_key, runs.c.local_slot, runs.c.status,
                         runs.c.detail).where(runs.c.schedule_key.in_(keys[start:start + 500]))
        for row in conn.execute(stmt):
            out[(row.schedule_key, row.local_slot)] = RunState(row.id, row.status, row.detail)
    return out
