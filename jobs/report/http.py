"""``/`` (a read-only dashboard) and ``/reports/`` (stored reports, and each configured one
live) in the service's HTTP app — behind the dashboard token (scheduler/http_auth.py).

These pages hold personal data (campaign figures, and the per-recipient export), so every
route here is wrapped by :func:`require_token`; tracking and unsubscribe stay public.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import escape
from pathlib import Path

from aiohttp import web

from jobs.report import charts, render
from jobs.report.config import ReportCampaign
from jobs.report.dashboard import dashboard_html
from jobs.report.produce import Request, produce
from scheduler.context import ServiceContext
from scheduler.engine import next_fire_times
from scheduler.http_auth import require_token
from scheduler.kinds import Registry
from scheduler.status import campaign_rows, check_rows

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
TYPES = {".html": "text/html", ".csv": "text/csv", ".json": "application/json"}


class ReportPages:
    def __init__(self, ctx: ServiceContext, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry

    @property
    def root(self) -> Path:
        return self.ctx.settings.var_dir / "reports"

    async def dashboard(self, _request: web.Request) -> web.Response:
        return web.Response(text=await self.ctx.in_thread(self._dashboard),
                            content_type="text/html")

    def _dashboard(self) -> str:
        ctx = self.ctx
        config, now = ctx.config, ctx.clock.now()
        next_times = next_fire_times(self.registry.specs(config), now)
        with ctx.begin() as conn:
            campaigns = campaign_rows(conn, config, next_times)
            checks = check_rows(conn, config)
        req = Request("dashboard", [], timedelta(days=7), now, [], ctx.settings.report_timezone)
        report = produce(config, ctx.db, req, now)
        joined = charts.joined_chart(report)
        reports = sorted(n for n, c in config.campaigns.items() if isinstance(c, ReportCampaign))
        return dashboard_html(report, campaigns, checks, reports, joined)

    async def index(self, _request: web.Request) -> web.Response:
        config = self.ctx.config
        names = sorted({n for n, c in config.campaigns.items() if isinstance(c, ReportCampaign)}
                       | {p.name for p in self.root.glob("*") if p.is_dir()})
        items = []
        for name in names:
            files = sorted((p.name for p in (self.root / name).glob("*.*")
                            if p.suffix in TYPES and p.name[0] != "."), reverse=True)[:12]
            links = " ".join(f'<a href="/reports/{escape(name)}/{escape(f)}">{escape(f)}</a>'
                             for f in files)
            live = (f'<a class="live" href="/reports/{escape(name)}/live">open now</a> '
                    if name in config.campaigns else "")
            items.append(f"<li><strong>{escape(name)}</strong> {live}{links}</li>")
        body = "".join(items) or "<li>No reports yet.</li>"
        return web.Response(content_type="text/html", text=(
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>martech reports</title></head><body style=\"font-family: sans-serif; "
            f'max-width: 820px; margin: 16px auto; padding: 0 12px;"><p><a href="/">dashboard</a>'
            f"</p><h1>Reports</h1><ul>{body}</ul></body></html>"))

    async def live(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        campaign = self.ctx.config.campaigns.get(name)
        if not isinstance(campaign, ReportCampaign):
            raise web.HTTPNotFound(text="no such report\n")
        html = await self.ctx.in_thread(self._live, campaign)
        return web.Response(text=html, content_type="text/html")

    def _live(self, campaign: ReportCampaign) -> str:
        ctx = self.ctx
        now = ctx.clock.now()
        req = Request.of(campaign, ctx.settings, now)
        report = produce(ctx.config, ctx.db, req, now)
        return render.render_html(report, ctx.settings.templates_dir, charts.charts(report))

    async def file(self, request: web.Request) -> web.StreamResponse:
        name, filename = request.match_info["name"], request.match_info["file"]
        if not (SAFE_NAME.match(name) and SAFE_NAME.match(filename)):
            raise web.HTTPNotFound()
        path = self.root / name / filename
        kind = TYPES.get(path.suffix)
        if kind is None or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=kind, charset="utf-8")


def add_routes(app: web.Application, ctx: ServiceContext, registry: Registry) -> None:
    pages = ReportPages(ctx, registry)
    token = ctx.settings.dashboard_token
    app.router.add_get("/", require_token(token, pages.dashboard))
    app.router.add_get("/reports/", require_token(token, pages.index))
    app.router.add_get("/reports/{name}/live", require_token(token, pages.live))
    app.router.add_get("/reports/{name}/{file}", require_token(token, pages.file))


__all__ = ["add_routes"]
