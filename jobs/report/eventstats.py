"""Opened/clicked events summed per (run, kind, traffic, agent, url), from raw rows or rollups.

``n`` counts events, ``n_first`` the first of each (delivery, kind, traffic): unique opens
and clicks, which stay exact when hours are summed into days.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobs.report.sqlx import truncate
from scheduler.store.tables import event_rollups, tracking_events

ENGAGEMENT = ("opened", "clicked")  # the bulk: rolled up; other kinds stay raw


@dataclass(frozen=True)
class EventKey:
    run_id: int | None
    campaign: str | None
    kind: str
    traffic: str | None
    agent: str | None
    url: str | None


def kinds_present(conn: sa.Connection) -> list[str]:
    """Every event kind stored, one index seek per kind (a recursive ``min(kind) > last``):
    DISTINCT would read every event."""
    e = tracking_events.c
    seen = sa.select(sa.func.min(e.kind).label("kind")).cte("kinds", recursive=True)
    after = sa.select(e.kind).where(e.kind > seen.c.kind).order_by(e.kind).limit(1)
    seen = seen.union_all(sa.select(after.scalar_subquery()).where(seen.c.kind.is_not(None)))
    return [k for (k,) in conn.execute(sa.select(seen.c.kind)) if k is not None]


def raw_groups(conn: sa.Connection, start: datetime, end: datetime, *,
               grain: str | None = None, runs: Any = None) -> list[tuple[Any, ...]]:
    """Rows (bucket, campaign, run_id, kind, traffic, agent, url, n, n_first)."""
    e = tracking_events.c
    bucket = (truncate(e.at, grain, conn.dialect.name) if grain else sa.null()).label("bucket")
    first = sa.func.sum(sa.case((e.first.is_(True), 1), else_=0))
    stmt = (sa.select(bucket, e.campaign, e.run_id, e.kind, e.traffic, e.agent, e.url,
                      sa.func.count(), first)
            .where(e.kind.in_(ENGAGEMENT), e.at >= start, e.at < end)
            .group_by(*([bucket] if grain else []), e.campaign, e.run_id, e.kind, e.traffic,
                      e.agent, e.url))
    if runs is not None:
        stmt = stmt.where(e.run_id.in_(runs))
    return [tuple(row) for row in conn.execute(stmt)]


def totals(conn: sa.Connection, segments: Iterable[Any], runs: Any
           ) -> dict[EventKey, list[int]]:
    """(n, n_first) per key over ``segments``, for events of the runs in ``runs`` (a select)."""
    out: dict[EventKey, list[int]] = {}

    def add(key: EventKey, n: int, n_first: int) -> None:
        slot = out.setdefault(key, [0, 0])
        slot[0] += n
        slot[1] += n_first

    r = event_rollups.c
    for seg in segments:
        if seg.tier == "raw":
            for _b, campaign, run_id, kind, traffic, agent, url, n, n_first in raw_groups(
                    conn, seg.start, seg.end, runs=runs):
                add(EventKey(run_id, campaign, kind, traffic, agent, url), int(n),
                    int(n_first or 0))
            continue
        stmt = (sa.select(r.campaign, r.run_id, r.kind, r.traffic, r.agent, r.url,
                          sa.func.sum(r.n), sa.func.sum(r.n_first))
                .where(r.grain == seg.tier, r.start >= seg.start, r.start < seg.end,
                       r.run_id.in_(runs))
                .group_by(r.campaign, r.run_id, r.kind, r.traffic, r.agent, r.url))
        for campaign, run_id, kind, traffic, agent, url, n, n_first in conn.execute(stmt):
            add(EventKey(run_id, campaign, kind, traffic, agent, url), int(n), int(n_first))
    return out
