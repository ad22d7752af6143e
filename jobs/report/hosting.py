"""Per check: time-weighted uptime (maintenance and "guard could not see" apart), p50/p95
response time, and incidents with the campaigns they paused and the sends they held."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from jobs.report import checkstats
from jobs.report.campaigns import Window, held_by_incident
from jobs.report.checkstats import CheckRules, CheckTotals
from jobs.report.model import CheckSection, Incident
from jobs.report.sqlx import bucket_upper_ms
from jobs.report.tiers import plan, read_cursors
from scheduler.clock import utc
from scheduler.store.tables import incidents


def percentile_ms(hist: Counter[int], q: float) -> float | None:
    """The upper edge of the histogram bucket holding quantile ``q`` (10% resolution)."""
    total = sum(hist.values())
    if not total:
        return None
    want, seen = q * total, 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= want:
            return round(bucket_upper_ms(bucket), 1)
    return round(bucket_upper_ms(max(hist)), 1)


def uptime_pct(t: CheckTotals) -> float | None:
    seen = t.seconds["ok"] + t.seconds["fail"]
    return round(100.0 * t.seconds["ok"] / seen, 3) if seen else None


def check_totals(conn: sa.Connection, rules: CheckRules, window: Window
                 ) -> dict[str, CheckTotals]:
    segments = plan(window.since, window.until, read_cursors(conn, "checks"))
    return checkstats.totals(conn, rules, segments, window.now)


def _incidents(conn: sa.Connection, checks: list[str], window: Window) -> list[Incident]:
    i = incidents.c
    stmt = (sa.select(i.check_name, i.started_at, i.ended_at, i.detail, i.campaigns)
            .where(i.check_name.in_(checks), i.started_at < window.until,
                   sa.or_(i.ended_at.is_(None), i.ended_at > window.since))
            .order_by(i.started_at))
    out = []
    for name, started, ended, detail, campaigns in conn.execute(stmt):
        start, end = utc(started), ended and utc(ended)
        stop = end or window.now
        sends, held_runs = held_by_incident(conn, list(campaigns or []), start, stop)
        out.append(Incident(name, start, end, max((stop - start).total_seconds(), 0.0),
                            detail or "", sorted(campaigns or []), sends, held_runs))
    return out


def gather_checks(conn: sa.Connection, rules: CheckRules, prev_rules: CheckRules,
                  window: Window) -> list[CheckSection]:
    if not rules.checks:  # no checks configured: nothing to total (and no empty CASE in SQL)
        return []
    now_t = check_totals(conn, rules, window)
    prev_t = check_totals(conn, prev_rules, window.previous)
    found = _incidents(conn, rules.checks, window)
    period_s = (min(window.until, window.now) - window.since).total_seconds()
    out = []
    for name in rules.checks:
        t = now_t[name]
        seconds = {k: round(v, 3) for k, v in t.seconds.items()}
        seconds["no_data"] = round(max(period_s - sum(t.seconds.values()), 0.0), 3)
        out.append(CheckSection(
            name, uptime_pct(t), seconds, t.results, t.failures,
            percentile_ms(t.latency, 0.5), percentile_ms(t.latency, 0.95),
            uptime_pct(prev_t[name]), [x for x in found if x.check == name]))
    return out


def overall_uptime(sections: list[CheckSection]) -> float | None:
    ok = sum(c.seconds["ok"] for c in sections)
    fail = sum(c.seconds["fail"] for c in sections)
    return round(100.0 * ok / (ok + fail), 3) if ok + fail else None


__all__ = ["gather_checks", "overall_uptime", "percentile_ms", "uptime_pct"]
