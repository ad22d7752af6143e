"""Everything a tracking report says, read from the database for one period (pure queries).

Campaigns come in by name and kind, checks as :class:`CheckRules` (caps, maintenance), so
this module reads the other kinds' data only through the shared tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from jobs.report.campaigns import (
    CampaignData,
    Window,
    add_figures,
    gather_campaigns,
)
from jobs.report.checkstats import CheckRules
from jobs.report.hosting import gather_checks, overall_uptime
from jobs.report.model import CampaignSection, CheckSection, Figures, Headline, Report, Series
from jobs.report.posts import gather_posts
from jobs.report.reputation import gather_reputation
from jobs.report.tiers import HOUR, ceil_hour, floor_hour
from scheduler.store.tables import pauses


@dataclass(frozen=True)
class Scope:
    """What one report covers."""

    name: str
    kinds: dict[str, str]  # campaign -> kind
    rules: CheckRules  # for the period
    prev_rules: CheckRules  # for the period before it
    since: datetime
    until: datetime
    timezone: str = "UTC"


def gather(conn: sa.Connection, scope: Scope, now: datetime) -> Report:
    window = Window(scope.since, scope.until, now)
    paused_now: dict[str, list[str]] = {}
    for row in conn.execute(sa.select(pauses.c.campaign, pauses.c.reason)
                            .where(pauses.c.campaign.in_(sorted(scope.kinds)))
                            .order_by(pauses.c.since)):
        paused_now.setdefault(row.campaign, []).append(row.reason)
    data = gather_campaigns(conn, scope.kinds, window, paused_now)
    newsletters = [s.name for s in data.sections if s.kind == "newsletter"]
    reputations = gather_reputation(conn, newsletters, scope.since, scope.until)
    for section in data.sections:
        if section.name in reputations:
            section.reputation = reputations[section.name].to_json()
    checks = gather_checks(conn, scope.rules, scope.prev_rules, window)
    posts = gather_posts(conn, sorted(scope.kinds), window)
    series = _series(data, checks, scope, window)
    return Report(scope.name, scope.since, scope.until, now, scope.timezone,
                  headline(data.sections, checks), data.sections, checks, posts, series,
                  data.agents)


def _total(sections: list[CampaignSection], previous: bool) -> Figures | None:
    out = Figures()
    found = False
    for s in sections:
        fig = s.previous if previous else s.figures
        if fig is not None:
            add_figures(out, fig)
            found = True
    return out if found else None


def headline(sections: list[CampaignSection], checks: list[CheckSection]) -> list[Headline]:
    now, before = _total(sections, False) or Figures(), _total(sections, True)

    def pick(attr: str, fig: Figures | None) -> float | None:
        value = getattr(fig, attr) if fig is not None else None
        return float(value) if value is not None else None

    incidents = [i for c in checks for i in c.incidents]
    prev_up = [c.previous_uptime_pct for c in checks if c.previous_uptime_pct is not None]
    return [
        Headline("sent", "Sent", pick("sent", now), pick("sent", before)),
        Headline("delivered", "Delivered", pick("delivered", now), pick("delivered", before)),
        Headline("open_rate", "Human open rate", now.open_rate, pick("open_rate", before), "%"),
        Headline("click_rate", "Human click rate", now.click_rate, pick("click_rate", before),
                 "%"),
        Headline("unsubscribes", "Unsubscribes", pick("unsubscribes", now),
                 pick("unsubscribes", before), good="down"),
        Headline("uptime", "Hosting uptime", overall_uptime(checks),
                 round(sum(prev_up) / len(prev_up), 3) if prev_up else None, "%"),
        Headline("incidents", "Incidents", float(len(incidents)), None, good="down"),
        Headline("held_sends", "Sends held by incidents",
                 float(sum(i.held_sends for i in incidents)), None, good="down"),
    ]


def _series(data: CampaignData, checks: list[CheckSection], scope: Scope, window: Window
            ) -> Series:
    first, last = floor_hour(scope.since), ceil_hour(min(scope.until, window.now))
    hours: list[datetime] = []
    t = first
    while t < last and len(hours) < 24 * 400:
        hours.append(t)
        t += HOUR
    sends = {}
    for name in sorted(scope.kinds):
        per_hour = data.sends_per_hour.get(name)
        if scope.kinds[name] == "newsletter" or per_hour:
            sends[name] = [per_hour.get(h, 0) for h in hours] if per_hour else [0] * len(hours)
    incidents = [{"check": i.check, "start": i.start, "end": i.end or window.now}
                 for c in checks for i in c.incidents]
    maintenance = []
    for start, end, names in scope.rules.maintenance:
        if start < scope.until and end > scope.since:
            maintenance.append({"start": max(start, scope.since), "end": min(end, scope.until),
                                "checks": sorted(names)})
    pauses_ = [{"campaign": s.name, "reason": p.reason, "start": max(p.start, scope.since),
                "end": min(p.end or scope.until, scope.until)}
               for s in data.sections for p in s.pauses]
    return Series(hours, sends, incidents, _dedupe(maintenance), pauses_)


def _dedupe(spans: list[dict[str, object]]) -> list[dict[str, object]]:
    seen: set[tuple[object, object]] = set()
    out = []
    for span in spans:
        key = (span["start"], span["end"])
        if key not in seen:
            seen.add(key)
            out.append(span)
    return out


__all__ = ["Scope", "gather", "headline"]
