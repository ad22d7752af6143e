# ruff: noqa: E501  (the page template reads better unwrapped)
"""The read-only dashboard at ``/``: campaigns, checks, open incidents, recent runs, and the
joined chart of the last 7 days. Autoescaped, sandboxed, no JavaScript."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from jobs.report.model import Report
from jobs.report.render import human_duration, human_time, number
from scheduler.delivery.render import make_environment

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="60">
<title>martech dashboard</title>
<style>
 body { margin: 0; background: #f4f5f7; font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1f2933; font-size: 15px; }
 .page { max-width: 1000px; margin: 0 auto; padding: 16px; }
 .card { background: #fff; border: 1px solid #e4e7eb; border-radius: 8px; padding: 14px 16px; margin-bottom: 14px; }
 h1 { font-size: 22px; margin: 0; } h2 { font-size: 17px; margin: 0 0 8px 0; }
 table { border-collapse: collapse; width: 100%; font-size: 14px; }
 th, td { text-align: left; padding: 5px 6px; border-bottom: 1px solid #eef0f3; vertical-align: top; }
 th { font-size: 12px; color: #52606d; text-transform: uppercase; }
 .scroll { overflow-x: auto; } img { width: 100%; height: auto; }
 .up { color: #1e7b45; font-weight: 600; } .down { color: #b42318; font-weight: 600; }
 .unknown, .pending { color: #7b8794; font-weight: 600; }
 .muted { color: #7b8794; font-size: 13px; } a { color: #2f6db5; }
 .nav a { margin-right: 14px; }
</style></head><body><div class="page">
<div class="card"><h1>martech</h1><div class="muted">{{ when(r.generated_at) }} ({{ r.timezone }}) · refreshes every minute</div>
<p class="nav"><a id="reports-link" href="/reports/">All reports</a>{% for name in reports %}<a class="report-link" href="/reports/{{ name }}/live">{{ name }}</a>{% endfor %}</p></div>
{% if incidents %}<div class="card"><h2>Open incidents</h2><table>
{% for i in incidents %}<tr><td class="down">{{ i.check }}</td><td>since {{ when(i.start) }} ({{ duration(i.duration_s) }})</td><td>{{ i.detail }}</td><td>paused: {{ i.campaigns | join(", ") or "—" }}</td></tr>{% endfor %}
</table></div>{% endif %}
<div class="card"><h2>Last 7 days</h2><img src="{{ joined }}" alt="Sends per hour with incidents, maintenance and pauses"></div>
<div class="card"><h2>Campaigns</h2><div class="scroll"><table>
<tr><th>campaign</th><th>state</th><th>next run</th><th>last outcome</th></tr>
{% for c in campaigns %}<tr><td>{{ c.campaign }} <span class="muted">{{ c.kind }}</span></td>
<td>{% if c.paused %}<span class="down">paused</span> {% for p in c.paused %}<div class="muted">{{ p.reason }}{{ ": " ~ p.detail if p.detail }}</div>{% endfor %}{% elif not c.enabled %}disabled{% else %}<span class="up">active</span>{% endif %}{% if c.held %}<div class="muted">{{ c.held }} run(s) held</div>{% endif %}</td>
<td>{{ when_iso(c.next_run) }}</td><td>{{ c.last_outcome or "—" }}</td></tr>{% endfor %}
</table></div></div>
<div class="card"><h2>Checks</h2><div class="scroll"><table>
<tr><th>check</th><th>verdict</th><th>since</th><th>last result</th><th>7-day uptime</th></tr>
{% for ch in checks %}<tr><td>{{ ch.check }} <span class="muted">{{ ch.type }}</span></td><td class="{{ ch.verdict }}">{{ ch.verdict }}</td><td>{{ when_iso(ch.since) }}</td><td>{{ ch.last_result or "—" }}</td><td>{{ num(uptime.get(ch.check), "%") }}</td></tr>{% endfor %}
</table></div></div>
<div class="card"><h2>Recent runs</h2><div class="scroll"><table>
<tr><th>campaign</th><th>scheduled</th><th>outcome</th><th>sent</th></tr>
{% for c, run in runs %}<tr><td>{{ c }}</td><td>{{ when(run.scheduled_at) }}</td><td>{{ run.status }}</td><td>{{ num(run.figures.sent) }}</td></tr>{% endfor %}
</table></div></div>
</div></body></html>
"""


def dashboard_html(report: Report, campaigns: list[dict[str, Any]],
                   checks: list[dict[str, Any]], reports: list[str], joined: bytes) -> str:
    tz = ZoneInfo(report.timezone)
    env = make_environment(None, html=True)
    runs = sorted(((c.name, r) for c in report.campaigns for r in c.runs),
                  key=lambda pair: pair[1].scheduled_at, reverse=True)[:15]
    return env.from_string(PAGE).render(
        r=report, campaigns=campaigns, checks=checks, reports=reports, runs=runs,
        incidents=[i for i in report.incidents if i.end is None],
        uptime={c.name: c.uptime_pct for c in report.checks},
        joined="data:image/png;base64," + base64.b64encode(joined).decode(),
        when=lambda v: human_time(v, tz),
        when_iso=lambda v: human_time(datetime.fromisoformat(v), tz) if v else "—",
        duration=human_duration, num=number)
