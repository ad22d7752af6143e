"""Per-check sums over raw results, in SQL: time-weighted states and a latency histogram.

A result's time runs until the check's next result, capped at ``cap_s`` (a guard that stopped
leaves "no data", not hours of the last state), and counts in the state it saw — or as
``maintenance`` when it was taken inside a window that excuses the check. The same query
feeds the report (one group per check) and the rollup (one group per check and hour/day).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from jobs.report.sqlx import latency_bucket_sql, least, seconds_between, truncate
from scheduler.config.loader import LoadedConfig
from scheduler.config.targets import covered_by, guarded_by, spans_between
from scheduler.store.tables import check_latency_rollups, check_results, check_rollups

STATES = ("ok", "fail", "unknown", "maintenance")


@dataclass(frozen=True)
class CheckRules:
    """What turns results into time: each check's cap, and the windows that excuse it."""

    cap_s: dict[str, float]
    # (start, end, checks it excuses)
    maintenance: Sequence[tuple[datetime, datetime, frozenset[str]]] = ()

    @property
    def checks(self) -> list[str]:
        return sorted(self.cap_s)


def check_rules(config: LoadedConfig, start: datetime, end: datetime) -> CheckRules:
    """Caps from each check's interval; maintenance spans overlapping ``[start, end)``.

    A window excuses a check when it pauses everything, or a campaign the check guards.
    """
    checks = config.checks
    caps = {}
    for name, cfg in checks.checks.items():
        interval = cfg.interval or checks.defaults.interval
        timeout = cfg.timeout or checks.defaults.timeout
        caps[name] = max(2 * interval.total_seconds() + timeout.total_seconds(), 60.0)
    spans = []
    for window in checks.maintenance:
        if window.selector().all:
            names = frozenset(caps)
        else:
            covered = set(covered_by(config, window))
            names = frozenset(c for c in caps if covered & set(guarded_by(config, c)))
        spans += [(sp.start, sp.end, names) for sp in spans_between(window, start, end)]
    return CheckRules(caps, spans)


@dataclass
class CheckTotals:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STATES, 0.0))
    results: int = 0
    failures: int = 0
    latency: Counter[int] = field(default_factory=Counter)

    def add(self, other: CheckTotals) -> None:
        for state in STATES:
            self.seconds[state] += other.seconds[state]
        self.results += other.results
        self.failures += other.failures
        self.latency.update(other.latency)


def _caps(col: Any, rules: CheckRules) -> Any:
    by_cap: dict[float, list[str]] = {}
    for name, cap in rules.cap_s.items():
        by_cap.setdefault(cap, []).append(name)
    whens = [(col.in_(names), cap) for cap, names in sorted(by_cap.items())]
    return sa.case(*whens, else_=max(rules.cap_s.values(), default=60.0))


def _in_maintenance(sub: Any, rules: CheckRules, start: datetime, end: datetime) -> Any:
    terms = [sa.and_(sub.c.at >= s, sub.c.at < e, sub.c.check_name.in_(sorted(names)))
             for s, e, names in rules.maintenance if s < end and e > start and names]
    return sa.or_(*terms) if terms else sa.false()


def raw_times(conn: sa.Connection, rules: CheckRules, start: datetime, end: datetime,
              now: datetime, grain: str | None = None) -> list[tuple[Any, ...]]:
    """Rows (check_name, bucket, state, seconds, results, failures); bucket None per check."""
    dialect = conn.dialect.name
    max_cap = max(rules.cap_s.values(), default=60.0)
    lead = sa.func.lead(check_results.c.at).over(partition_by=check_results.c.check_name,
                                                 order_by=(check_results.c.at,
                                                           check_results.c.id))
    sub = (sa.select(check_results.c.check_name, check_results.c.at, check_results.c.outcome,
                     lead.label("next_at"))
           .where(check_results.c.check_name.in_(rules.checks), check_results.c.at >= start,
                  check_results.c.at < end + timedelta(seconds=max_cap))
           .subquery())
    until = sa.func.coalesce(sub.c.next_at, sa.literal(now, check_results.c.at.type))
    span = seconds_between(sub.c.at, until, dialect)
    seconds = least(span, _caps(sub.c.check_name, rules), dialect)
    state = sa.case((_in_maintenance(sub, rules, start, end), "maintenance"),
                    else_=sub.c.outcome).label("state")
    bucket = (truncate(sub.c.at, grain, dialect) if grain else sa.null()).label("bucket")
    stmt = (sa.select(sub.c.check_name, bucket, state,
                      sa.func.sum(sa.case((seconds > 0, seconds), else_=0.0)),
                      sa.func.count(),
                      sa.func.sum(sa.case((sub.c.outcome == "fail", 1), else_=0)))
            .where(sub.c.at < end)
            .group_by(sub.c.check_name, *([bucket] if grain else []), state))
    return [tuple(row) for row in conn.execute(stmt)]


def raw_latency(conn: sa.Connection, checks: Iterable[str], start: datetime, end: datetime,
                grain: str | None = None) -> list[tuple[Any, ...]]:
    """Rows (check_name, bucket, latency bucket, n) over ok results with a latency."""
    col = check_results.c
    bucket = (truncate(col.at, grain, conn.dialect.name) if grain else sa.null()).label("bucket")
    lat = latency_bucket_sql(col.latency_ms).label("lat")
    stmt = (sa.select(col.check_name, bucket, lat, sa.func.count())
            .where(col.check_name.in_(sorted(checks)), col.at >= start, col.at < end,
                   col.outcome == "ok", col.latency_ms.is_not(None))
            .group_by(col.check_name, *([bucket] if grain else []), lat))
    return [tuple(row) for row in conn.execute(stmt)]


def totals(conn: sa.Connection, rules: CheckRules, segments: Iterable[Any], now: datetime
           ) -> dict[str, CheckTotals]:
    """Per check, summed over ``segments`` (jobs.report.tiers.Segment)."""
    out = {name: CheckTotals() for name in rules.checks}
    for seg in segments:
        if seg.tier == "raw":
            for name, _b, state, secs, n, fails in raw_times(conn, rules, seg.start, seg.end,
                                                             now):
                _fold(out[name], state, float(secs or 0.0), int(n), int(fails or 0))
            for name, _b, lat, n in raw_latency(conn, rules.checks, seg.start, seg.end):
                out[name].latency[int(lat)] += int(n)
        else:
            _rolled(conn, out, rules.checks, seg.tier, seg.start, seg.end)
    return out


def _fold(t: CheckTotals, state: str, secs: float, n: int, fails: int) -> None:
    t.seconds[state if state in t.seconds else "unknown"] += secs
    t.results += n
    t.failures += fails


def _rolled(conn: sa.Connection, out: dict[str, CheckTotals], checks: list[str], grain: str,
            start: datetime, end: datetime) -> None:
    r = check_rollups.c
    stmt = (sa.select(r.check_name, sa.func.sum(r.ok_s), sa.func.sum(r.fail_s),
                      sa.func.sum(r.unknown_s), sa.func.sum(r.maintenance_s),
                      sa.func.sum(r.results), sa.func.sum(r.failures))
            .where(r.grain == grain, r.start >= start, r.start < end, r.check_name.in_(checks))
            .group_by(r.check_name))
    for name, ok_s, fail_s, unknown_s, maint_s, n, fails in conn.execute(stmt):
        t = CheckTotals({"ok": ok_s, "fail": fail_s, "unknown": unknown_s,
                         "maintenance": maint_s}, int(n), int(fails))
        out[name].add(t)
    lat = check_latency_rollups.c
    stmt2 = (sa.select(lat.check_name, lat.bucket, sa.func.sum(lat.n))
             .where(lat.grain == grain, lat.start >= start, lat.start < end,
                    lat.check_name.in_(checks))
             .group_by(lat.check_name, lat.bucket))
    for name, bucket, n in conn.execute(stmt2):
        out[name].latency[int(bucket)] += int(n)
