"""Turn ReportData into HTML (sandboxed Jinja2, inline-SVG bars), CSV and JSON files."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from jobs.report.data import ReportData
from scheduler.delivery.render import make_environment
from scheduler.errors import TemplateError as MartechTemplateError

TEMPLATE = "report.html"
BAR_MAX_PX = 240


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    width: int  # px, scaled to the largest value in its chart
    text: str


def bars(values: dict[str, int] | dict[str, float], suffix: str = "",
         scale_to: float | None = None) -> list[Bar]:
    top = scale_to if scale_to is not None else max(values.values(), default=0)
    out = []
    for label, value in values.items():
        width = round(BAR_MAX_PX * value / top) if top else 0
        out.append(Bar(label, value, width, f"{value:g}{suffix}"))
    return out


def render_html(data: ReportData, templates_dir: Path) -> str:
    """The HTML report. Templates run sandboxed with autoescape (ARCHITECTURE.md, invariant 9:
    no code in content).

    :raises TemplateError: if the report template is missing or broken.
    """
    env = make_environment(templates_dir, html=True, keep_trailing_newline=False)
    campaigns = []
    for c in data.campaigns:
        campaigns.append({
            "report": c,
            "run_bars": bars(c.runs),
            "delivery_bars": bars(c.deliveries),
            "event_bars": bars(c.events),
        })
    uptime = {c.name: c.uptime_pct for c in data.checks if c.uptime_pct is not None}
    try:
        template = env.get_template(TEMPLATE)
        return template.render(data=data, campaigns=campaigns, checks=data.checks,
                               uptime_bars=bars(uptime, "%", scale_to=100.0),
                               bar_max=BAR_MAX_PX)
    except TemplateError as exc:
        raise MartechTemplateError(TEMPLATE, str(exc), getattr(exc, "lineno", None)) from exc


def render_csv(data: ReportData) -> str:
    """Long format — one fact per row — so spreadsheets can pivot it."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "name", "metric", "value", "detail"])
    for c in data.campaigns:
        for status, n in c.runs.items():
            writer.writerow(["runs", c.name, status, n, ""])
        for reason in c.run_reasons:
            writer.writerow(["run_reason", c.name, reason["status"], reason["scheduled_at"],
                             reason["reason"]])
        for status, n in c.deliveries.items():
            writer.writerow(["deliveries", c.name, status, n, ""])
        for kind, n in c.events.items():
            writer.writerow(["events", c.name, kind, n, ""])
        for pause in c.pause_reasons:
            writer.writerow(["pause", c.name, "paused", pause["at"], pause["reason"]])
    for check in data.checks:
        pct = "" if check.uptime_pct is None else check.uptime_pct
        writer.writerow(["check_uptime", check.name, "uptime_pct", pct,
                         f"ok={check.ok} fail={check.fail} unknown={check.unknown}"])
    return out.getvalue()


def render_text(data: ReportData) -> str:
    """The plain-text part of the e-mailed report."""
    lines = [f"Report {data.name}: {data.since:%Y-%m-%d %H:%M} to {data.until:%Y-%m-%d %H:%M} UTC",
             ""]
    for c in data.campaigns:
        lines.append(f"{c.name} ({c.kind})")
        lines.append("  runs: " + (_pairs(c.runs) or "none"))
        lines.append("  deliveries: " + (_pairs(c.deliveries) or "none"))
        lines.append("  events: " + (_pairs(c.events) or "none"))
        if c.reputation.get("sent"):
            lines.append("  reputation: " + c.reputation["summary"])
        if c.paused_now:
            lines.append("  paused now: " + ", ".join(c.paused_now))
    if data.checks:
        lines.append("")
        lines.append("Check uptime:")
        for check in data.checks:
            pct = "no data" if check.uptime_pct is None else f"{check.uptime_pct}%"
            lines.append(f"  {check.name}: {pct}")
    return "\n".join(lines) + "\n"


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


def write_files(data: ReportData, out_dir: Path, formats: list[str], templates_dir: Path
                ) -> dict[str, Path]:
    """Write ``<out_dir>/<timestamp>.<ext>`` for each format; return the paths by format."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = data.until.strftime("%Y%m%dT%H%M%SZ")
    bodies = {
        "html": lambda: render_html(data, templates_dir),
        "csv": lambda: render_csv(data),
        "json": lambda: json.dumps(data.to_json(), indent=2) + "\n",
    }
    written = {}
    for fmt in formats:
        path = out_dir / f"{stamp}.{fmt}"
        tmp = path.with_suffix(f".{fmt}.tmp")
        tmp.write_text(bodies[fmt](), encoding="utf-8")
        tmp.replace(path)  # atomic: a reader never sees half a report
        written[fmt] = path
    return written
