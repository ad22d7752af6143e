"""``martech report [NAME] [--campaign X] [--since 7d] [--format …] [--out PATH]`` and
``martech retention`` (roll up and prune now)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from jobs.report import render
from jobs.report.config import REPORT_FORMATS, ReportCampaign
from jobs.report.produce import Request, build
from jobs.report.retention import Ages, catch_up, rules_of
from scheduler.cli import friendly_errors
from scheduler.clock import SystemClock
from scheduler.durations import parse_duration
from scheduler.errors import TemplateError as MartechTemplateError
from scheduler.errors import UnknownCampaign

FORMATS = ("html", "csv", "json", "recipients")


def _period(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"expected a duration like 7d, 24h or 90m, got {text!r}",
                                 param_hint="--since") from exc


def add_commands(group: click.Group) -> None:
    @group.command("report")
    @click.argument("name", required=False)
    @click.option("--campaign", "campaigns", multiple=True, help="only this campaign (repeat)")
    @click.option("--since", "since", help="period ending now, e.g. 7d (default: the "
                                           "report's period, or 7d)")
    @click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
                  help="html|csv|json|recipients (repeat; default: the report's formats); "
                       "recipients is the per-recipient CSV, the only one naming addresses")
    @click.option("--out", "out", type=click.Path(path_type=Path),
                  help="write here instead of var/reports/NAME/ (a file with one --format)")
    @click.pass_obj
    def report_cmd(state: Any, name: str | None, campaigns: tuple[str, ...],
                   since: str | None, formats: tuple[str, ...], out: Path | None) -> None:
        """Write a tracking report now, covering the period up to now; print the paths.

        NAME is a report from reports.yaml; without it, every campaign is reported as
        "adhoc". Files go to var/reports/NAME/<end time>.<ext> and latest.<ext>.
        """
        @friendly_errors
        def _go() -> None:
            config = state.config()
            now = SystemClock().now()
            req = _request(config, state.settings, name, now)
            for c in campaigns:
                if c not in config.campaigns:
                    raise UnknownCampaign(c)
            req = Request(req.name, list(campaigns) or req.campaigns,
                          _period(since) or req.period, now,
                          list(formats) or req.formats, req.timezone, req.email, req.from_)
            out_dir = out
            if out is not None and len(req.formats) == 1 and out.suffix:
                out_dir = out.parent
            try:
                _report, paths = build(config, state.settings, state.db(), req, now,
                                       out_dir=out_dir)
            except MartechTemplateError as exc:
                raise click.ClickException(str(exc)) from None
            if out is not None and out_dir is not None and out_dir != out:
                [(fmt, path)] = paths.items()
                path.replace(out)
                ext = render.EXTENSIONS.get(fmt, fmt)
                (out_dir / f"latest.{ext}").unlink(missing_ok=True)
                paths = {fmt: out}
            for path in paths.values():
                click.echo(str(path))
            if req.email:
                click.echo(f"e-mail queued to {', '.join(req.email)}")

        _go()

    _add_retention(group)


def _add_retention(group: click.Group) -> None:
    @group.command("retention")
    @click.pass_obj
    def retention_cmd(state: Any) -> None:
        """Roll check results and events up into hourly/daily aggregates, prune old rows."""
        @friendly_errors
        def _go() -> None:
            config = state.config()
            now = SystemClock().now()
            s = state.settings
            ages = Ages(timedelta(seconds=s.retention_raw_age_s),
                        timedelta(seconds=s.retention_hourly_age_s))
            steps = catch_up(state.db(), rules_of(config), now, ages)
            click.echo(f"rolled up {steps} chunk(s)")

        _go()


def _request(config: Any, settings: Any, name: str | None, now: Any) -> Request:
    if name is None:
        return Request("adhoc", [], timedelta(days=7), now, list(REPORT_FORMATS),
                       settings.report_timezone)
    campaign = config.campaigns.get(name)
    if not isinstance(campaign, ReportCampaign):
        raise UnknownCampaign(name)
    return Request.of(campaign, settings, now)
