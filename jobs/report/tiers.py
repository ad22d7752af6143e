"""Where a period's figures come from: raw rows, hourly or daily aggregates.

Retention (``retention.py``) keeps three tiers of each source: raw rows (check results,
opened/clicked events) for ``retention_raw_age``, hourly aggregates of every complete hour
(kept up to date by the rollup) for ``retention_hourly_age``, and daily aggregates after that.
:func:`plan` cuts a period into segments, each read from one tier and none read twice:
complete (UTC) days from the daily aggregates, complete hours of the partial days at the
edges from the hourly ones, the partial hours at the edges and anything not rolled up yet
from the raw rows. Aggregates have the resolution of their bucket: a bucket belongs to a
period when it starts inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from scheduler.store.tables import rollup_cursors

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SOURCES = ("checks", "events")


@dataclass(frozen=True)
class Cursors:
    """How far one source's rollup and pruning have got."""

    rolled: datetime = EPOCH  # every complete hour before this is in the hourly tier
    daily: datetime = EPOCH  # every complete day before this is in the daily tier
    raw_pruned: datetime = EPOCH  # raw rows before this are gone
    hour_pruned: datetime = EPOCH  # hourly rows before this are gone (daily only)


@dataclass(frozen=True)
class Segment:
    tier: str  # raw | hour | day
    start: datetime
    end: datetime


def floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    floor = floor_hour(t)
    return floor if floor == t else floor + HOUR


def floor_day(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def read_cursors(conn: sa.Connection, source: str) -> Cursors:
    rows = {r.name: r.until for r in conn.execute(
        sa.select(rollup_cursors.c.name, rollup_cursors.c.until)
        .where(rollup_cursors.c.name.like(f"{source}:%")))}
    return Cursors(rows.get(f"{source}:hour", EPOCH), rows.get(f"{source}:day", EPOCH),
                   rows.get(f"{source}:raw_pruned", EPOCH),
                   rows.get(f"{source}:hour_pruned", EPOCH))


def plan(start: datetime, end: datetime, cur: Cursors) -> list[Segment]:
    """Cut ``[start, end)`` into contiguous segments, each read from exactly one tier: whole
    days already summed from the daily tier (a year is 365 rows a check, not 8,760), whole
    hours from the hourly tier, the rest from the raw rows.
    """
    out: list[Segment] = []

    def add(tier: str, a: datetime, b: datetime) -> None:
        if a < b:
            out.append(Segment(tier, a, b))

    t = start
    if t < cur.hour_pruned:  # only days left there: whole days at the edge
        stop = min(end, cur.hour_pruned)
        add("day", floor_day(t), stop)
        t = stop
    if t >= end:
        return out
    first_day, last_day = ceil_day(t), min(floor_day(end), cur.daily)
    if first_day < last_day:
        out += _hours(t, first_day, cur)
        add("day", first_day, last_day)
        out += _hours(last_day, end, cur)
    else:
        out += _hours(t, end, cur)
    return out


def ceil_day(t: datetime) -> datetime:
    floor = floor_day(t)
    return floor if floor == t else floor + DAY


def _hours(t: datetime, end: datetime, cur: Cursors) -> list[Segment]:
    """``[t, end)`` from the hourly tier where rolled up, raw at the partial-hour edges (or
    the hour's aggregate, where the raw rows are pruned)."""
    out: list[Segment] = []

    def add(tier: str, a: datetime, b: datetime) -> None:
        if a < b:
            out.append(Segment(tier, a, b))

    first, last = ceil_hour(t), min(floor_hour(end), cur.rolled)
    if first >= last:  # no complete rolled-up hour inside: all raw
        add("raw", t, end)
        return out
    if t >= cur.raw_pruned:
        add("raw", t, first)
    else:
        add("hour", floor_hour(t), first)
    add("hour", first, last)
    if last >= cur.raw_pruned:
        add("raw", last, end)
    else:
        add("hour", last, end)
    return out
