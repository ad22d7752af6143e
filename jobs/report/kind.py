"""The ``report`` kind: tracking reports to var/reports/<name>/ (HTML, CSV, JSON), e-mailed too.

Thin on purpose: the queries live in ``report_data``, the files in ``report_render``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from jinja2 import TemplateSyntaxError

from jobs.report.config import REPORTS_FILE, ReportCampaign
from jobs.report.data import ReportData, gather
from jobs.report.render import render_html, render_text, write_files
from scheduler.cli import friendly_errors
from scheduler.clock import SystemClock
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.delivery.budget import TemplateBudgetExceeded
from scheduler.delivery.render import make_environment
from scheduler.errors import MartechError, Problem, UnknownCampaign
from scheduler.errors import TemplateError as MartechTemplateError
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.settings import Settings
from scheduler.store import outbox
from scheduler.store.runs import RunRow

log = logging.getLogger("martech.report")


def build(config: LoadedConfig, settings: Settings, db: Any, campaign: ReportCampaign,
          until: datetime, now: datetime, run_id: int | None = None
          ) -> tuple[ReportData, dict[str, Path]]:
    """Gather, write the files and (if ``email:``) enqueue the mail — one transaction."""
    names = campaign.campaigns or [n for n, c in config.campaigns.items()
                                   if c.kind != "report"]
    kinds = {n: config.campaigns[n].kind for n in names if n in config.campaigns}
    checks = sorted(config.checks.checks)
    with db.begin() as conn:
        data = gather(conn, campaign.name, kinds, checks, until - campaign.period, until, now)
        paths = write_files(data, settings.var_dir / "reports" / campaign.name,
                            list(campaign.formats), settings.templates_dir)
        if campaign.email:
            html = render_html(data, settings.templates_dir)
            payload = {"from": campaign.from_,
                       "subject": f"martech report {campaign.name}: "
                                  f"{data.since:%Y-%m-%d} to {data.until:%Y-%m-%d}",
                       "text": render_text(data), "html": html}
            key = f"report:{campaign.name}:{run_id if run_id is not None else until.isoformat()}"
            for address in campaign.email:
                outbox.enqueue(conn, topic="report", channel="email", target=address,
                               payload=payload, now=now, dedupe_key=f"{key}:{address}")
    return data, paths


class ReportKind:
    kind = "report"
    campaign_model = ReportCampaign

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        sched = campaign.schedule
        return [ScheduleSpec(campaign.name, campaign.name, self.kind, sched.to_schedule(),
                             sched.misfire_grace, sched.missed)]

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        # A scheduled report covers the period ending at its occurrence, so a late or
        # re-run report says the same thing; a manual one ends now.
        now = ctx.clock.now()
        until = run.scheduled_at if run.trigger == "schedule" else now
        try:
            data, paths = await ctx.in_thread(build, ctx.config, ctx.settings, ctx.db,
                                              campaign, until, now, run.id)
        except MartechError as exc:
            return RunResult("failed", str(exc))
        log.info("report written", extra={"action": "report", "job": campaign.name,
                                          "run_id": run.id,
                                          "files": ", ".join(map(str, paths.values()))})
        return RunResult("done", f"wrote {len(paths)} file(s)",
                         stats={"files": [str(p) for p in paths.values()],
                                "campaigns": len(data.campaigns),
                                "emailed": len(campaign.email)})

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings
                 ) -> list[Problem]:
        problems = [config.campaign_problem(campaign.name, ("campaigns",),
                                            f"report {campaign.name!r} names unknown campaign "
                                            f"{other!r}")
                    for other in campaign.campaigns if other not in config.campaigns]
        return problems + self._template_problems(campaign, config, settings)

    @staticmethod
    def _template_problems(campaign: Any, config: LoadedConfig, settings: Settings
                           ) -> list[Problem]:
        if "html" not in campaign.formats and not campaign.email:
            return []
        path = settings.templates_dir / "report.html"
        if not path.is_file():
            return [config.campaign_problem(campaign.name, ("formats",),
                                            f"report template {path} not found")]
        try:
            make_environment(None, html=True).parse(path.read_text(encoding="utf-8"))
        except TemplateSyntaxError as exc:
            return [Problem(str(path), exc.lineno, "", f"template syntax error: {exc.message}")]
        now = SystemClock().now()
        try:  # an empty report, under the work budget every render has
            render_html(ReportData(campaign.name, now, now, now, [], []), settings.templates_dir)
        except TemplateBudgetExceeded as exc:
            return [Problem(str(path), exc.line, "template", exc.message)]
        except MartechTemplateError:
            pass  # data-dependent; the run reports it with the data it has
        return []


def _cli(group: click.Group) -> None:
    @group.command("report")
    @click.argument("name")
    @click.pass_obj
    def report_cmd(state: Any, name: str) -> None:
        """Write report NAME now (covering its period up to now) and print the file paths."""
        @friendly_errors
        def _go() -> None:
            config = state.config()
            campaign = config.campaigns.get(name)
            if not isinstance(campaign, ReportCampaign):
                raise UnknownCampaign(name)
            now = SystemClock().now()
            try:
                _data, paths = build(config, state.settings, state.db(), campaign, now, now)
            except MartechTemplateError as exc:
                raise click.ClickException(str(exc)) from None
            for path in paths.values():
                click.echo(str(path))
            if campaign.email:
                click.echo(f"e-mail queued to {', '.join(campaign.email)}")

        _go()


def register(registry: Registry) -> None:
    registry.add_kind(ReportKind(), REPORTS_FILE)
    registry.cli.append(_cli)
