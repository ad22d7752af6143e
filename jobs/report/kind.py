"""The ``report`` kind: tracking reports to var/reports/<name>/ (HTML, CSV, JSON), e-mailed
too, served at /reports/ and summed up on the dashboard at / (``http.py``).

Thin on purpose: queries in ``data`` (and its parts), files in ``render``, charts in
``charts``, retention in ``retention``.
"""

from __future__ import annotations

import logging
from typing import Any

from jinja2 import TemplateSyntaxError

from jobs.report.cli import add_commands
from jobs.report.config import REPORTS_FILE, ReportCampaign
from jobs.report.http import add_routes
from jobs.report.model import CHART_NAMES, empty_report
from jobs.report.produce import Request, build
from jobs.report.render import render_html
from jobs.report.retention import run_retention
from scheduler.clock import SystemClock
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.delivery.budget import TemplateBudgetExceeded
from scheduler.delivery.render import make_environment
from scheduler.errors import MartechError, Problem
from scheduler.errors import TemplateError as MartechTemplateError
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.settings import Settings
from scheduler.store.runs import RunRow

log = logging.getLogger("martech.report")


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
        req = Request.of(campaign, ctx.settings, until)
        try:
            report, paths = await ctx.in_thread(build, ctx.config, ctx.settings, ctx.db, req,
                                                now, run.id)
        except MartechError as exc:
            return RunResult("failed", str(exc))
        log.info("report written", extra={"action": "report", "job": campaign.name,
                                          "run_id": run.id,
                                          "files": ", ".join(map(str, paths.values()))})
        return RunResult("done", f"wrote {len(paths)} file(s)",
                         stats={"files": [str(p) for p in paths.values()],
                                "campaigns": len(report.campaigns),
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
            render_html(empty_report(campaign.name, now), settings.templates_dir,
                        dict.fromkeys(CHART_NAMES, b""))
        except TemplateBudgetExceeded as exc:
            return [Problem(str(path), exc.line, "template", exc.message)]
        except MartechTemplateError:
            pass  # data-dependent; the run reports it with the data it has
        return []


def register(registry: Registry) -> None:
    registry.add_kind(ReportKind(), REPORTS_FILE)
    registry.cli.append(add_commands)
    registry.components["retention"] = run_retention
    # The dashboard shows next run times, which come from every kind's schedules.
    registry.http_routes.append(lambda app, ctx: add_routes(app, ctx, registry))
