"""The report's charts, drawn by matplotlib (Agg: no display) as PNG bytes. Import it only
through jobs/report/charts.py, which loads it when a chart is first drawn.

PNG, not SVG: Gmail and Outlook show neither inline SVG nor data: URIs, but they show PNGs
attached as CID images, and a browser shows the same PNGs inline in the HTML file.
"""

from __future__ import annotations

import io
from datetime import datetime
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")  # before pyplot: never look for a display

import matplotlib.dates as mdates
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from jobs.report.model import Report

WIDTH_IN, DPI = 7.2, 110  # ~790 px: the e-mail column, sharp on a phone when scaled down
PALETTE = ("#2f6db5", "#e08a1e", "#3a9a5b", "#8c57b8", "#c4463a", "#4f9fa8")
INCIDENT, MAINTENANCE, PAUSE = "#d9534f", "#9aa5b1", "#f0ad4e"


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI, bbox_inches="tight")
    return out.getvalue()


def joined_chart(report: Report) -> bytes:
    """Sends per hour per campaign on one time axis, incidents and maintenance as bands,
    and the pauses they caused as bars under the axis."""
    tz = ZoneInfo(report.timezone)
    s = report.series
    fig = Figure(figsize=(WIDTH_IN, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    hours = [_num(h) for h in s.hours]
    for i, (name, counts) in enumerate(sorted(s.sends.items())):
        color = PALETTE[i % len(PALETTE)]
        ax.step(hours, counts, where="post", color=color, linewidth=1.6, label=name)
    for band in s.maintenance:
        ax.axvspan(_num(band["start"]), _num(band["end"]), color=MAINTENANCE,
                   alpha=0.35, linewidth=0)
    for band in s.incidents:
        ax.axvspan(_num(band["start"]), _num(band["end"]), color=INCIDENT,
                   alpha=0.25, linewidth=0)
    top = max([max(c, default=0) for c in s.sends.values()] + [1])
    for i, p in enumerate(s.pauses):
        ax.hlines(-top * (0.06 + 0.05 * (i % 3)), _num(p["start"]), _num(p["end"]),
                  color=PAUSE, linewidth=4)
    ax.set_ylim(bottom=-top * 0.22, top=top * 1.12)
    ax.set_ylabel("sends per hour")
    ax.set_xlim(_num(report.since), _num(report.until))
    ax.xaxis.set_major_formatter(
        mdates.DateFormatter("%a %d %b", tz=tz))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(
        mdates.AutoDateLocator(tz=tz, minticks=3, maxticks=6))  # type: ignore[no-untyped-call]
    ax.grid(axis="y", color="#e5e5e5")
    ax.spines[["top", "right"]].set_visible(False)
    handles, _labels = ax.get_legend_handles_labels()
    handles += [Patch(color=INCIDENT, alpha=0.4, label="incident"),
                Patch(color=MAINTENANCE, alpha=0.5, label="maintenance"),
                Patch(color=PAUSE, label="campaign paused")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, -0.22), ncol=4,
              frameon=False, fontsize=8)
    ax.set_title(f"Sends per hour, incidents and pauses ({report.timezone})", fontsize=10,
                 loc="left")
    return _png(fig)


def _local(value: object, tz: ZoneInfo) -> datetime:
    assert isinstance(value, datetime)
    return value.astimezone(tz)


def _num(value: object) -> float:
    assert isinstance(value, datetime)
    return float(mdates.date2num(value))  # type: ignore[no-untyped-call]


def uptime_chart(report: Report) -> bytes:
    """Per check: share of the period up, down, guard blind, in maintenance, no data."""
    checks = report.checks
    fig = Figure(figsize=(WIDTH_IN, 0.5 + 0.42 * max(len(checks), 1)))
    ax = fig.add_subplot(1, 1, 1)
    parts = (("ok", "#3a9a5b", "up"), ("fail", INCIDENT, "down"),
             ("unknown", "#6c757d", "guard could not see"),
             ("maintenance", MAINTENANCE, "maintenance"), ("no_data", "#e9ecef", "no data"))
    names = [c.name for c in checks][::-1]
    left = [0.0] * len(names)
    for key, color, label in parts:
        values = []
        for c in checks[::-1]:
            total = sum(c.seconds.values()) or 1.0
            values.append(100.0 * c.seconds.get(key, 0.0) / total)
        ax.barh(names, values, left=left, color=color, label=label, height=0.6)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for y, c in enumerate(checks[::-1]):
        text = "no data" if c.uptime_pct is None else f"{c.uptime_pct:.2f}%"
        ax.text(101, y, text, va="center", fontsize=8)
    ax.set_xlim(0, 112)
    ax.set_xlabel("% of the period")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.35 if len(checks) < 3 else -0.12),
              ncol=5, frameon=False, fontsize=8)
    ax.set_title("Uptime by check (time-weighted)", fontsize=10, loc="left")
    return _png(fig)


def charts(report: Report) -> dict[str, bytes]:
    """Every chart of the report by name; the HTML refers to them by these names."""
    out = {"joined": joined_chart(report)}
    if report.checks:
        out["uptime"] = uptime_chart(report)
    return out
