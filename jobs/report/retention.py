"""Retention: roll raw check results and opened/clicked events up into hourly and daily
aggregates, then prune what is older than the configured ages (issue 11, point 9).

Every complete hour is rolled up as soon as it ends (so reports read a few thousand
aggregate rows, not millions of results); raw rows go after ``retention_raw_age_s``, hourly
rows after ``retention_hourly_age_s`` (days stay). Each step is one transaction that moves
its cursor with the rows it writes, so a crash or a second node never counts an hour twice
(the cursor row is locked on PostgreSQL, and SQLite has one writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobs.report import checkstats, eventstats
from jobs.report.checkstats import CheckRules, check_rules
from jobs.report.sqlx import truncate
from jobs.report.tiers import DAY, EPOCH, Cursors, floor_day, floor_hour, read_cursors
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.store.dialect import insert_for
from scheduler.store.tables import (
    check_latency_rollups,
    check_results,
    check_rollups,
    event_rollups,
    rollup_cursors,
    tracking_events,
)

log = logging.getLogger("martech.retention")
CHUNK = timedelta(days=1)  # one transaction rolls up at most a day of raw rows
RulesFor = Callable[[datetime, datetime], CheckRules]


def rules_of(config: LoadedConfig) -> RulesFor:
    """The check rules of any span, from the config (caps; the maintenance windows in it)."""
    return functools.partial(check_rules, config)


@dataclass(frozen=True)
class Ages:
    raw: timedelta
    hourly: timedelta


def _set_cursor(conn: sa.Connection, name: str, until: datetime) -> None:
    stmt = insert_for(conn, rollup_cursors).values(name=name, until=until)
    conn.execute(stmt.on_conflict_do_update(index_elements=[rollup_cursors.c.name],
                                            set_={"until": until}))


def _lock(conn: sa.Connection, source: str) -> Cursors:
    if conn.dialect.name == "postgresql":
        # Serialise two nodes' rollups of one source on its cursor row.
        _set_cursor_if_missing(conn, f"{source}:hour")
        conn.execute(sa.select(rollup_cursors.c.name).where(
            rollup_cursors.c.name == f"{source}:hour").with_for_update())
    return read_cursors(conn, source)


def _set_cursor_if_missing(conn: sa.Connection, name: str) -> None:
    conn.execute(insert_for(conn, rollup_cursors).values(name=name, until=EPOCH)
                 .on_conflict_do_nothing())


def _earliest(conn: sa.Connection, col: Any) -> datetime | None:
    value = conn.execute(sa.select(sa.func.min(col))).scalar()
    return value if isinstance(value, datetime) else None


def roll_checks(conn: sa.Connection, rules_for: RulesFor, now: datetime) -> datetime | None:
    """Roll up the next chunk of complete hours of check results; return the new cursor.

    The rules (caps, maintenance windows) are the chunk's own: a backlog of a year rolled up
    with one week's windows would count the other weeks' maintenance as downtime.
    """
    cur = _lock(conn, "checks")
    start = cur.rolled
    if start == EPOCH:
        first = _earliest(conn, check_results.c.at)
        if first is None:
            return None
        start = floor_hour(first)
    end = min(floor_hour(now), start + CHUNK)
    if end <= start:
        return None
    rules = rules_for(start, end)
    if not rules.cap_s:
        return None
    rows = [{"check_name": name, "grain": "hour", "start": _as_dt(bucket), "state": state,
             "secs": float(secs or 0.0), "n": int(n), "fails": int(fails or 0)}
            for name, bucket, state, secs, n, fails in checkstats.raw_times(
                conn, rules, start, end, now, grain="hour")]
    _insert_check_rows(conn, rows)
    lat = [{"check_name": name, "grain": "hour", "start": _as_dt(bucket), "bucket": int(b),
            "n": int(n)}
           for name, bucket, b, n in checkstats.raw_latency(conn, rules.checks, start, end,
                                                            grain="hour")]
    if lat:
        conn.execute(sa.insert(check_latency_rollups), lat)
    _set_cursor(conn, "checks:hour", end)
    return end


def _as_dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=EPOCH.tzinfo)
    return datetime.fromisoformat(str(value)).replace(tzinfo=EPOCH.tzinfo)


def _insert_check_rows(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    merged: dict[tuple[str, datetime], dict[str, Any]] = {}
    for row in rows:
        key = (row["check_name"], row["start"])
        slot = merged.setdefault(key, {"check_name": key[0], "grain": "hour", "start": key[1],
                                       "ok_s": 0.0, "fail_s": 0.0, "unknown_s": 0.0,
                                       "maintenance_s": 0.0, "results": 0, "failures": 0})
        column = f"{row['state']}_s" if row["state"] in checkstats.STATES else "unknown_s"
        slot[column] += row["secs"]
        slot["results"] += row["n"]
        slot["failures"] += row["fails"]
    if merged:
        conn.execute(sa.insert(check_rollups), list(merged.values()))


def roll_events(conn: sa.Connection, now: datetime) -> datetime | None:
    cur = _lock(conn, "events")
    start = cur.rolled
    if start == EPOCH:
        first = _earliest(conn, tracking_events.c.at)
        if first is None:
            return None
        start = floor_hour(first)
    end = min(floor_hour(now), start + CHUNK)
    if end <= start:
        return None
    rows = [{"grain": "hour", "start": _as_dt(bucket), "campaign": campaign, "run_id": run_id,
             "kind": kind, "traffic": traffic, "agent": agent, "url": url, "n": int(n),
             "n_first": int(n_first or 0)}
            for bucket, campaign, run_id, kind, traffic, agent, url, n, n_first in
            eventstats.raw_groups(conn, start, end, grain="hour")]
    if rows:
        conn.execute(sa.insert(event_rollups), rows)
    _set_cursor(conn, "events:hour", end)
    return end


def roll_days(conn: sa.Connection, source: str) -> datetime | None:
    """Sum complete days of hourly rows into daily rows (hourly rows stay until pruned)."""
    cur = _lock(conn, source)
    start = cur.daily
    if start == EPOCH:
        table = check_rollups if source == "checks" else event_rollups
        first = _earliest(conn, table.c.start)
        if first is None:
            return None
        start = floor_day(first)
    end = min(floor_day(cur.rolled), start + 30 * DAY)
    if end <= start:
        return None
    dialect = conn.dialect.name
    if source == "checks":
        _days_checks(conn, start, end, dialect)
    else:
        _days_events(conn, start, end, dialect)
    _set_cursor(conn, f"{source}:day", end)
    return end


def _days_checks(conn: sa.Connection, start: datetime, end: datetime, dialect: str) -> None:
    r = check_rollups.c
    day = truncate(r.start, "day", dialect)
    sel = (sa.select(r.check_name, sa.literal("day"), day, sa.func.sum(r.ok_s),
                     sa.func.sum(r.fail_s), sa.func.sum(r.unknown_s),
                     sa.func.sum(r.maintenance_s), sa.func.sum(r.results),
                     sa.func.sum(r.failures))
           .where(r.grain == "hour", r.start >= start, r.start < end)
           .group_by(r.check_name, day))
    conn.execute(sa.insert(check_rollups).from_select(
        ["check_name", "grain", "start", "ok_s", "fail_s", "unknown_s", "maintenance_s",
         "results", "failures"], sel))
    lat = check_latency_rollups.c
    lday = truncate(lat.start, "day", dialect)
    sel2 = (sa.select(lat.check_name, sa.literal("day"), lday, lat.bucket, sa.func.sum(lat.n))
            .where(lat.grain == "hour", lat.start >= start, lat.start < end)
            .group_by(lat.check_name, lday, lat.bucket))
    conn.execute(sa.insert(check_latency_rollups).from_select(
        ["check_name", "grain", "start", "bucket", "n"], sel2))


def _days_events(conn: sa.Connection, start: datetime, end: datetime, dialect: str) -> None:
    r = event_rollups.c
    day = truncate(r.start, "day", dialect)
    sel = (sa.select(sa.literal("day"), day, r.campaign, r.run_id, r.kind, r.traffic, r.agent,
                     r.url, sa.func.sum(r.n), sa.func.sum(r.n_first))
           .where(r.grain == "hour", r.start >= start, r.start < end)
           .group_by(day, r.campaign, r.run_id, r.kind, r.traffic, r.agent, r.url))
    conn.execute(sa.insert(event_rollups).from_select(
        ["grain", "start", "campaign", "run_id", "kind", "traffic", "agent", "url", "n",
         "n_first"], sel))


def prune(conn: sa.Connection, source: str, now: datetime, ages: Ages) -> dict[str, int]:
    """Delete raw rows older than the raw age (only once rolled up), hourly past theirs."""
    cur = read_cursors(conn, source)
    raw_before = min(cur.rolled, floor_hour(now - ages.raw))
    hour_before = min(cur.daily, floor_day(now - ages.hourly))
    deleted = {"raw": 0, "hour": 0}
    if raw_before > cur.raw_pruned:
        if source == "checks":
            stmt = sa.delete(check_results).where(check_results.c.at < raw_before)
        else:
            stmt = sa.delete(tracking_events).where(
                tracking_events.c.at < raw_before,
                tracking_events.c.kind.in_(eventstats.ENGAGEMENT))
        deleted["raw"] = int(conn.execute(stmt).rowcount or 0)
        _set_cursor(conn, f"{source}:raw_pruned", raw_before)
    if hour_before > cur.hour_pruned:
        tables = ((check_rollups, check_latency_rollups) if source == "checks"
                  else (event_rollups,))
        for table in tables:
            result = conn.execute(sa.delete(table).where(table.c.grain == "hour",
                                                         table.c.start < hour_before))
            deleted["hour"] += int(result.rowcount or 0)
        _set_cursor(conn, f"{source}:hour_pruned", hour_before)
    return deleted


def catch_up(db: Any, rules_for: RulesFor, now: datetime, ages: Ages | None = None,
             max_steps: int = 100_000) -> int:
    """Roll up everything complete before ``now`` (and prune when ``ages``); return steps.
    ``rules_for(start, end)``: the check rules for a chunk (:func:`rules_of` a config).

    One transaction per chunk, so a long backlog (a year after an upgrade) never holds a
    lock for long and a crash loses at most the chunk in progress.
    """
    steps = 0
    stages: list[Callable[[sa.Connection], datetime | None]] = [
        lambda c: roll_checks(c, rules_for, now), lambda c: roll_events(c, now),
        lambda c: roll_days(c, "checks"), lambda c: roll_days(c, "events")]
    for step in stages:
        while steps < max_steps:
            with db.begin() as conn:
                moved = step(conn)
            if moved is None:
                break
            steps += 1
    if ages is not None:
        for source in ("checks", "events"):
            with db.begin() as conn:
                deleted = prune(conn, source, now, ages)
            if any(deleted.values()):
                log.info("retention pruned %s: %d raw, %d hourly rows", source,
                         deleted["raw"], deleted["hour"], extra={"action": "retention_prune"})
    return steps


def ages_of(ctx: ServiceContext) -> Ages:
    s = ctx.settings
    return Ages(timedelta(seconds=s.retention_raw_age_s),
                timedelta(seconds=s.retention_hourly_age_s))


async def run_retention(ctx: ServiceContext) -> None:
    """Background component of ``martech run``: roll up and prune every interval."""
    while not ctx.stopping.is_set():
        try:
            now = ctx.clock.now()
            await ctx.in_thread(catch_up, ctx.db, rules_of(ctx.config), now, ages_of(ctx))
        except Exception:
            log.exception("retention rollup failed; retrying",
                          extra={"action": "retention_error"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stopping.wait(), ctx.settings.retention_interval_s)
