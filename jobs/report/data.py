"""What a tracking report says, read from the database for one period (pure queries)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobs.report.reputation import gather_reputation
from scheduler.store.tables import check_results, deliveries, pauses, runs, tracking_events

RUN_STATUSES = ("done", "failed", "missed", "held", "skipped", "coalesced", "running",
                "pending")
DELIVERY_STATUSES = ("sent", "failed", "bounced", "unknown", "pending", "sending", "skipped",
                     "suppressed")
# Reasons are listed for runs that did not simply go out.
EXPLAINED = ("failed", "missed", "held", "skipped")


@dataclass
class CampaignReport:
    name: str
    kind: str
    runs: dict[str, int] = field(default_factory=dict)
    run_reasons: list[dict[str, str]] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    unique: dict[str, int] = field(default_factory=dict)  # opened/clicked: distinct deliveries
    pause_reasons: list[dict[str, str]] = field(default_factory=list)
    paused_now: list[str] = field(default_factory=list)
    reputation: dict[str, Any] = field(default_factory=dict)  # see reputation.py


@dataclass
class CheckUptime:
    name: str
    ok: int
    fail: int
    unknown: int

    @property
    def uptime_pct(self) -> float | None:
        """Share of conclusive results that were ok; "unknown" (guard blind) is left out."""
        seen = self.ok + self.fail
        return round(100.0 * self.ok / seen, 2) if seen else None


@dataclass
class ReportData:
    name: str
    since: datetime
    until: datetime
    generated_at: datetime
    campaigns: list[CampaignReport]
    checks: list[CheckUptime]

    def to_json(self) -> dict[str, Any]:
        return {
            "report": self.name,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "generated_at": self.generated_at.isoformat(),
            "campaigns": [asdict(c) for c in self.campaigns],
            "checks": [{**asdict(c), "uptime_pct": c.uptime_pct} for c in self.checks],
        }


def gather(conn: sa.Connection, name: str, campaigns: dict[str, str], checks: list[str],
           since: datetime, until: datetime, now: datetime) -> ReportData:
    """Everything for ``campaigns`` (name -> kind) and ``checks`` in ``[since, until)``."""
    reports = {n: CampaignReport(n, kind) for n, kind in sorted(campaigns.items())}
    names = list(reports)
    _runs(conn, reports, names, since, until)
    _deliveries(conn, reports, names, since, until)
    _events(conn, reports, names, since, until)
    for row in conn.execute(sa.select(pauses.c.campaign, pauses.c.reason)
                            .where(pauses.c.campaign.in_(names))):
        reports[row.campaign].paused_now.append(row.reason)
    for campaign, rep in gather_reputation(conn, names, since, until).items():
        reports[campaign].reputation = rep.to_json()
    return ReportData(name, since, until, now, list(reports.values()),
                      _uptime(conn, checks, since, until))


def _runs(conn: sa.Connection, reports: dict[str, CampaignReport], names: list[str],
          since: datetime, until: datetime) -> None:
    stmt = (sa.select(runs.c.campaign, runs.c.status, runs.c.scheduled_at, runs.c.detail)
            .where(runs.c.campaign.in_(names), runs.c.scheduled_at >= since,
                   runs.c.scheduled_at < until)
            .order_by(runs.c.scheduled_at))
    counts: dict[str, Counter[str]] = {n: Counter() for n in names}
    for row in conn.execute(stmt):
        counts[row.campaign][row.status] += 1
        if row.status in EXPLAINED:
            reports[row.campaign].run_reasons.append({
                "scheduled_at": row.scheduled_at.isoformat(), "status": row.status,
                "reason": row.detail or ""})
    for n in names:
        reports[n].runs = {s: counts[n][s] for s in RUN_STATUSES if counts[n][s]}


def _deliveries(conn: sa.Connection, reports: dict[str, CampaignReport], names: list[str],
                since: datetime, until: datetime) -> None:
    stmt = (sa.select(runs.c.campaign, deliveries.c.status, sa.func.count())
            .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
            .where(runs.c.campaign.in_(names), runs.c.scheduled_at >= since,
                   runs.c.scheduled_at < until)
            .group_by(runs.c.campaign, deliveries.c.status))
    for campaign, status, count in conn.execute(stmt):
        reports[campaign].deliveries[status] = int(count)
    for report in reports.values():
        ordered = {s: report.deliveries.get(s, 0) for s in ("sent", "failed", "bounced",
                                                            "unknown")}
        ordered.update({s: c for s, c in report.deliveries.items() if s not in ordered})
        report.deliveries = ordered


def _events(conn: sa.Connection, reports: dict[str, CampaignReport], names: list[str],
            since: datetime, until: datetime) -> None:
    in_period = (tracking_events.c.campaign.in_(names), tracking_events.c.at >= since,
                 tracking_events.c.at < until)
    stmt = (sa.select(tracking_events.c.campaign, tracking_events.c.kind, sa.func.count())
            .where(*in_period).group_by(tracking_events.c.campaign, tracking_events.c.kind))
    for campaign, kind, count in conn.execute(stmt):
        reports[campaign].events[kind] = int(count)
    unique = (sa.select(tracking_events.c.campaign, tracking_events.c.kind,
                        sa.func.count(sa.distinct(tracking_events.c.delivery_id)))
              .where(*in_period, tracking_events.c.kind.in_(("opened", "clicked")))
              .group_by(tracking_events.c.campaign, tracking_events.c.kind))
    for campaign, kind, count in conn.execute(unique):
        reports[campaign].unique[kind] = int(count)
    paused = (sa.select(tracking_events.c.campaign, tracking_events.c.at,
                        tracking_events.c.detail)
              .where(*in_period, tracking_events.c.kind == "paused")
              .order_by(tracking_events.c.at))
    for row in conn.execute(paused):
        reports[row.campaign].pause_reasons.append(
            {"at": row.at.isoformat(), "reason": row.detail or ""})


def _uptime(conn: sa.Connection, checks: list[str], since: datetime, until: datetime
            ) -> list[CheckUptime]:
    stmt = (sa.select(check_results.c.check_name, check_results.c.outcome, sa.func.count())
            .where(check_results.c.check_name.in_(checks), check_results.c.at >= since,
                   check_results.c.at < until)
            .group_by(check_results.c.check_name, check_results.c.outcome))
    counts: dict[str, Counter[str]] = {c: Counter() for c in checks}
    for name, outcome, count in conn.execute(stmt):
        counts[name][outcome] += int(count)
    return [CheckUptime(c, counts[c]["ok"], counts[c]["fail"], counts[c]["unknown"])
            for c in sorted(checks)]
