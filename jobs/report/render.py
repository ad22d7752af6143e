"""Turn a Report into its outputs: self-contained HTML (charts inline as PNG), the e-mail
(HTML with CID images), long-format CSV, JSON, plain text — all from the same data."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import TemplateError

from jobs.report.model import Report
from scheduler.delivery.render import make_environment
from scheduler.errors import TemplateError as MartechTemplateError

TEMPLATE = "report.html"
CID_DOMAIN = "report.martech"


def human_time(value: datetime | None, tz: ZoneInfo, *, with_year: bool = False) -> str:
    if value is None:
        return "—"
    local = value.astimezone(tz)
    fmt = "%a %d %b %Y, %H:%M" if with_year else "%a %d %b, %H:%M"
    return local.strftime(fmt)


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    minutes, _ = divmod(s, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min"


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "%":
        return f"{value:.1f}%" if value < 99.9 or value == 100 else f"{value:.2f}%"
    return f"{value:,.0f}".replace(",", "\u202f")


def change_text(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    suffix = " pt" if unit == "%" else "%"
    sign = "+" if value > 0 else "\u2212" if value < 0 else "\u00b1"
    return f"{sign}{abs(value):.1f}{suffix}"


def change_class(value: float | None, good: str = "up") -> str:
    if not value:
        return "flat"
    return "good" if (value > 0) == (good == "up") else "bad"


def render_html(report: Report, templates_dir: Path, images: dict[str, bytes], *,
                cid: bool = False, report_links: dict[str, str] | None = None) -> str:
    """The HTML report; charts inline (``data:`` PNG) or, for e-mail, as ``cid:`` refs.
    Templates run sandboxed with autoescape (ARCHITECTURE.md, invariant 9: no code in content).

    :raises TemplateError: if the report template is missing or broken.
    """
    env = make_environment(templates_dir, html=True, keep_trailing_newline=False)
    tz = ZoneInfo(report.timezone)
    if cid:
        srcs = {name: f"cid:{name}@{CID_DOMAIN}" for name in images}
    else:
        srcs = {name: "data:image/png;base64," + base64.b64encode(png).decode()
                for name, png in images.items()}
    try:
        template = env.get_template(TEMPLATE)
        return template.render(
            r=report, charts=srcs, when=lambda v: human_time(v, tz),
            when_y=lambda v: human_time(v, tz, with_year=True), duration=human_duration,
            num=number, delta=change_text, delta_class=change_class,
            links=report_links or {})
    except TemplateError as exc:
        raise MartechTemplateError(TEMPLATE, str(exc), getattr(exc, "lineno", None)) from exc


def email_payload(report: Report, templates_dir: Path, images: dict[str, bytes],
                  from_: str) -> dict[str, Any]:
    """The outbox payload: HTML referring to ``cid:`` images sent beside it."""
    tz = ZoneInfo(report.timezone)
    return {
        "from": from_,
        "subject": f"martech report {report.name}: {report.since.astimezone(tz):%d %b} \u2013 "
                   f"{report.until.astimezone(tz):%d %b %Y}",
        "text": render_text(report),
        "html": render_html(report, templates_dir, images, cid=True),
        "images": {f"{name}@{CID_DOMAIN}": base64.b64encode(png).decode()
                   for name, png in images.items()},
    }


def csv_rows(report: Report) -> Iterator[list[Any]]:
    """Long format: one fact per row (section, name, metric, value, period, detail)."""
    for h in report.headline:
        yield ["headline", "", h.name, h.value, "current", ""]
        yield ["headline", "", h.name, h.previous, "previous", ""]
    for c in report.campaigns:
        for period, fig in (("current", c.figures), ("previous", c.previous)):
            if fig is None:
                continue
            for metric, value in _flat(fig.to_json()):
                yield ["campaign", c.name, metric, value, period, ""]
        for run in c.runs:
            for metric, value in _flat(run.figures.to_json()):
                yield ["run", c.name, metric, value, "current", f"run {run.id} "
                       f"{run.scheduled_at.isoformat()}"]
        for link in c.top_links:
            for traffic in ("human", "machine", "suspect"):
                yield ["link", c.name, f"clicks.{traffic}", link[traffic], "current",
                       link["url"]]
        for reason, secs in c.paused_s.items():
            yield ["campaign", c.name, "paused_s", round(secs, 3), "current", reason]
        for r in c.not_sent_runs:
            yield ["run_not_sent", c.name, r["status"], r["scheduled_at"].isoformat(),
                   "current", r["reason"]]
    for ch in report.checks:
        yield ["check", ch.name, "uptime_pct", ch.uptime_pct, "current", ""]
        yield ["check", ch.name, "uptime_pct", ch.previous_uptime_pct, "previous", ""]
        for state, secs in ch.seconds.items():
            yield ["check", ch.name, f"seconds.{state}", secs, "current", ""]
        yield ["check", ch.name, "p50_ms", ch.p50_ms, "current", ""]
        yield ["check", ch.name, "p95_ms", ch.p95_ms, "current", ""]
        for inc in ch.incidents:
            yield ["incident", ch.name, "duration_s", round(inc.duration_s, 3), "current",
                   f"{inc.start.isoformat()} held_sends={inc.held_sends} "
                   f"campaigns={','.join(inc.campaigns)}"]
    for p in report.posts:
        yield ["post", p.campaign, "reminders_sent", p.reminders_sent, "current", p.post_id]
        yield ["post", p.campaign, "on_time", p.on_time, "current", p.post_id]


def _flat(body: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in body.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "name", "metric", "value", "period", "detail"])
    for row in csv_rows(report):
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def render_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2) + "\n"


def render_text(report: Report) -> str:
    """The plain-text part of the e-mailed report."""
    tz = ZoneInfo(report.timezone)
    lines = [f"Report {report.name}: {human_time(report.since, tz, with_year=True)} to "
             f"{human_time(report.until, tz, with_year=True)} ({report.timezone})", ""]
    for h in report.headline:
        lines.append(f"  {h.label}: {number(h.value, h.unit)} {change_text(h.change, h.unit)}"
                     .rstrip())
    for c in report.campaigns:
        f = c.figures
        lines.append("")
        lines.append(f"{c.name} ({c.kind}): sent {f.sent}, delivered {f.delivered}, "
                     f"human opens {f.opens.get('human', 0)} "
                     f"(machine {f.opens.get('machine', 0)}), "
                     f"human clicks {f.clicks.get('human', 0)}, unsubscribes {f.unsubscribes}")
        if c.reputation.get("sent"):
            lines.append("  reputation: " + c.reputation["summary"])
        if c.paused_now:
            lines.append("  paused now: " + ", ".join(c.paused_now))
    if report.checks:
        lines.append("")
        lines.append("Check uptime:")
        for ch in report.checks:
            pct = "no data" if ch.uptime_pct is None else f"{ch.uptime_pct}%"
            lines.append(f"  {ch.name}: {pct}, {len(ch.incidents)} incident(s)")
    return "\n".join(lines) + "\n"


EXTENSIONS = {"recipients": "recipients.csv"}  # a CSV: spreadsheets open it by its name


def write_files(report: Report, out_dir: Path, formats: list[str],
                bodies: dict[str, Callable[[], str]]) -> dict[str, Path]:
    """``<out_dir>/<until:%Y%m%dT%H%M%SZ>.<ext>`` per format, plus ``latest.<ext>``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report.until.strftime("%Y%m%dT%H%M%SZ")
    written = {}
    for fmt in formats:
        body, ext = bodies[fmt](), EXTENSIONS.get(fmt, fmt)
        for path in (out_dir / f"{stamp}.{ext}", out_dir / f"latest.{ext}"):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(body, encoding="utf-8")
            tmp.replace(path)  # atomic: a reader never sees half a report
        written[fmt] = out_dir / f"{stamp}.{ext}"
    return written
