"""One report end to end: which campaigns and period (``Request``), the aggregates brought
up to date, the figures read, the files written, the e-mail queued."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jobs.report import charts, render
from jobs.report.checkstats import check_rules
from jobs.report.config import ReportCampaign
from jobs.report.data import Scope, gather
from jobs.report.export import recipients_csv
from jobs.report.model import Report
from jobs.report.retention import catch_up, rules_of
from scheduler.config.loader import LoadedConfig
from scheduler.settings import Settings
from scheduler.store import outbox


@dataclass(frozen=True)
class Request:
    """One report to produce: which campaigns, which period, which outputs."""

    name: str
    campaigns: list[str]  # empty: every campaign but reports
    period: timedelta
    until: datetime
    formats: list[str]
    timezone: str
    email: tuple[str, ...] = ()
    from_: str = "martech <martech@localhost>"

    @classmethod
    def of(cls, campaign: ReportCampaign, settings: Settings, until: datetime) -> Request:
        return cls(campaign.name, list(campaign.campaigns), campaign.period, until,
                   list(campaign.formats), campaign.timezone or settings.report_timezone,
                   tuple(campaign.email), campaign.from_)


def scope_of(config: LoadedConfig, req: Request) -> Scope:
    names = req.campaigns or [n for n, c in config.campaigns.items() if c.kind != "report"]
    kinds = {n: config.campaigns[n].kind for n in names if n in config.campaigns}
    since = req.until - req.period
    return Scope(req.name, kinds, check_rules(config, since, req.until),
                 check_rules(config, since - req.period, since), since, req.until,
                 req.timezone)


def produce(config: LoadedConfig, db: Any, req: Request, now: datetime) -> Report:
    """Bring the aggregates up to date, then read the report (one transaction)."""
    scope = scope_of(config, req)
    catch_up(db, rules_of(config), now)
    with db.begin() as conn:
        return gather(conn, scope, now)


def build(config: LoadedConfig, settings: Settings, db: Any, req: Request, now: datetime,
          run_id: int | None = None, out_dir: Path | None = None
          ) -> tuple[Report, dict[str, Path]]:
    """Gather, write the files, and (if ``email``) enqueue the mail."""
    report = produce(config, db, req, now)
    images = charts.charts(report)
    templates = settings.templates_dir
    bodies = {
        "html": lambda: render.render_html(report, templates, images),
        "csv": lambda: render.render_csv(report),
        "json": lambda: render.render_json(report),
        "recipients": lambda: _recipients(db, report),
    }
    target = out_dir or settings.var_dir / "reports" / req.name
    paths = render.write_files(report, target, req.formats, bodies)
    if req.email:
        payload = render.email_payload(report, templates, images, req.from_)
        key = f"report:{req.name}:{run_id if run_id is not None else req.until.isoformat()}"
        with db.begin() as conn:
            for address in req.email:
                outbox.enqueue(conn, topic="report", channel="email", target=address,
                               payload=payload, now=now, dedupe_key=f"{key}:{address}")
    return report, paths


def _recipients(db: Any, report: Report) -> str:
    with db.begin() as conn:
        return recipients_csv(conn, [c.name for c in report.campaigns], report.since,
                              report.until)
