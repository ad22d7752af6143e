"""When a campaign's last pause began and ended, from its ``paused`` / ``resumed`` events.

A campaign is paused while it has at least one reason; reasons overlap (a guard pause inside a
maintenance window), so the span is from the moment the first reason was added to the moment
the last one was removed. :func:`pauses.add` and :func:`pauses.remove` write exactly one event
per reason that really changed, so walking the events backwards from the latest ``resumed``
and counting reasons in and out finds where the span began.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from scheduler.clock import utc
from scheduler.store.tables import pauses, tracking_events

MAX_EVENTS = 1000  # a span with more reason changes than this is reported from its tail


@dataclass(frozen=True)
class PauseSpan:
    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start


def last_pause(conn: sa.Connection, campaign: str) -> PauseSpan | None:
    """The campaign's most recent finished pause; None if paused now or never paused."""
    if conn.execute(sa.select(sa.literal(1)).where(pauses.c.campaign == campaign)
                    .limit(1)).first() is not None:
        return None
    rows = conn.execute(
        sa.select(tracking_events.c.kind, tracking_events.c.at)
        .where(tracking_events.c.campaign == campaign,
               tracking_events.c.kind.in_(("paused", "resumed")))
        .order_by(tracking_events.c.at.desc(), tracking_events.c.id.desc())
        .limit(MAX_EVENTS)).all()
    if not rows or rows[0].kind != "resumed":
        return None
    end = utc(rows[0].at)
    depth = 0
    start = end
    for row in rows:
        depth += 1 if row.kind == "resumed" else -1
        start = utc(row.at)
        if depth <= 0:
            break
    return PauseSpan(start, end)
