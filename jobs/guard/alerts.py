"""Guard alerts: what changed, rendered for e-mail and a Slack-compatible webhook, enqueued in
the outbox inside the same transaction as the decision (so an alert is never lost)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from jinja2.sandbox import ImmutableSandboxedEnvironment

from scheduler.config.checks import AlertRoute
from scheduler.delivery.render import make_environment
from scheduler.store import outbox
from scheduler.store.tables import deliveries, runs

TEMPLATE = "guard-alert"
BUILTIN_TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "email"
# Which ``on:`` entry of an alert route each event belongs to.
ROUTE_EVENT = {"down": "down", "reminder": "down", "up": "up", "unknown": "unknown",
               "visible": "unknown", "maintenance_start": "maintenance",
               "maintenance_end": "maintenance"}
TITLES = {"down": "DOWN", "reminder": "STILL DOWN", "up": "UP", "unknown": "CANNOT SEE",
          "visible": "CAN SEE AGAIN", "maintenance_start": "MAINTENANCE STARTED",
          "maintenance_end": "MAINTENANCE ENDED"}


@dataclass(frozen=True)
class Held:
    campaign: str
    held_runs: int
    pending_sends: int


@dataclass
class Alert:
    """One change worth telling IT about."""

    event: str  # down | up | reminder | unknown | visible | maintenance_start | maintenance_end
    subject_name: str  # the check or window name
    at: datetime
    detail: str = ""
    since: datetime | None = None
    paused: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    still_paused: dict[str, list[str]] = field(default_factory=dict)  # campaign -> reasons
    held: list[Held] = field(default_factory=list)
    window_end: datetime | None = None
    dedupe: str = ""

    @property
    def title(self) -> str:
        return f"{TITLES[self.event]}: {self.subject_name}"

    def subject(self) -> str:
        parts = [f"[martech] {self.title}"]
        if self.paused:
            parts.append(f"{len(self.paused)} campaign(s) paused")
        if self.resumed:
            parts.append(f"{len(self.resumed)} campaign(s) resumed")
        return " — ".join(parts)

    def context(self) -> dict[str, Any]:
        return {
            "alert": self, "title": self.title, "event": self.event,
            "name": self.subject_name, "detail": self.detail,
            "at": _fmt(self.at), "since": _fmt(self.since), "window_end": _fmt(self.window_end),
            "paused": self.paused, "resumed": self.resumed, "still_paused": self.still_paused,
            "held": self.held,
            "held_runs": sum(h.held_runs for h in self.held),
            "pending_sends": sum(h.pending_sends for h in self.held),
        }


def _fmt(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _environments(templates_dir: str
                  ) -> tuple[ImmutableSandboxedEnvironment, ImmutableSandboxedEnvironment]:
    # Built per alert (alerts are rare), so an edited template is used at the next alert.
    dirs = [Path(templates_dir), BUILTIN_TEMPLATES]
    return (make_environment(dirs, html=True, keep_trailing_newline=False),
            make_environment(dirs, html=False))


def render_email(alert: Alert, templates_dir: Path, from_: str) -> dict[str, Any]:
    html_env, text_env = _environments(str(templates_dir))
    ctx = alert.context()
    return {
        "from": from_,
        "subject": alert.subject(),
        "text": text_env.get_template(f"{TEMPLATE}.txt").render(ctx),
        "html": html_env.get_template(f"{TEMPLATE}.html").render(ctx),
        "headers": {"X-Martech-Alert": alert.event},
    }


def _campaign_list(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) or "none"


def render_webhook(alert: Alert, fmt: str) -> dict[str, Any]:
    """Slack-compatible (``text`` + ``blocks``), or plain JSON facts when ``format: json``."""
    held_runs = sum(h.held_runs for h in alert.held)
    pending = sum(h.pending_sends for h in alert.held)
    if fmt == "json":
        return {
            "event": alert.event, "name": alert.subject_name, "at": alert.at.isoformat(),
            "detail": alert.detail, "paused": alert.paused, "resumed": alert.resumed,
            "still_paused": alert.still_paused,
            "held": [h.__dict__ for h in alert.held],
            "since": alert.since.isoformat() if alert.since else None,
        }
    lines = [f"*{alert.title}*" + (f" — {alert.detail}" if alert.detail else "")]
    if alert.paused:
        lines.append(f"Paused: {_campaign_list(alert.paused)}")
    if alert.resumed:
        lines.append(f"Resumed: {_campaign_list(alert.resumed)}")
    for name, reasons in sorted(alert.still_paused.items()):
        lines.append(f"Still paused: `{name}` ({', '.join(reasons)})")
    if held_runs or pending:
        lines.append(f"Sends held: {pending} pending e-mail(s), {held_runs} held run(s)")
    if alert.since:
        lines.append(f"Since {_fmt(alert.since)}")
    text = "\n".join(lines)
    return {"text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def held_summary(conn: sa.Connection, campaigns: list[str]) -> list[Held]:
    """Per campaign: runs held by the pause and e-mails still waiting to be sent."""
    if not campaigns:
        return []
    held_runs: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
        sa.select(runs.c.campaign, sa.func.count())
        .where(runs.c.campaign.in_(campaigns), runs.c.status == "held")
        .group_by(runs.c.campaign)).all())
    pending: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
        sa.select(runs.c.campaign, sa.func.count())
        .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
        .where(runs.c.campaign.in_(campaigns),
               runs.c.status.in_(("pending", "running", "held")),
               deliveries.c.status.in_(("pending", "sending")))
        .group_by(runs.c.campaign)).all())
    return [Held(c, int(held_runs.get(c, 0)), int(pending.get(c, 0))) for c in campaigns
            if held_runs.get(c) or pending.get(c)]


def enqueue_alert(conn: sa.Connection, alert: Alert, routes: list[AlertRoute],
                  templates_dir: Path, from_: str) -> int:
    """One outbox row per route that wants this event; returns how many were queued."""
    wanted = ROUTE_EVENT[alert.event]
    queued = 0
    email_payload: dict[str, Any] | None = None
    for index, route in enumerate(routes):
        if wanted not in route.on:
            continue
        key = f"guard:{alert.dedupe}:{index}" if alert.dedupe else None
        if route.email is not None:
            if email_payload is None:
                email_payload = render_email(alert, templates_dir, from_)
            new = outbox.enqueue(conn, topic="alert", channel="email", target=route.email,
                                 payload=email_payload, now=alert.at, dedupe_key=key)
        else:
            assert route.webhook is not None
            payload = {**render_webhook(alert, route.format), "_format": route.format}
            new = outbox.enqueue(conn, topic="alert", channel="webhook", target=route.webhook,
                                 payload=payload, now=alert.at, dedupe_key=key)
        queued += new is not None
    return queued
