"""Sender reputation per campaign: the complaint rate against the bulk-sender line, bounces
that came back later, and the resume ramps — the figures Gmail's and Yahoo's 2024 rules judge.

Kept apart from ``data.py`` on purpose: :func:`gather_reputation` is one query per figure, and
``data.gather`` only copies its result onto each campaign (``CampaignReport.reputation``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.store.tables import deliveries, runs, tracking_events

COMPLAINT_LIMIT = 0.003  # Gmail and Yahoo: stay under 0.3% (what their postmaster tools show)
COMPLAINT_WARN = 0.001  # their advice: aim for under 0.1%


@dataclass
class Reputation:
    sent: int = 0  # delivered to the relay in the period (bounced-later ones included)
    complaints: int = 0
    bounced_later: int = 0  # hard bounces reported after the relay accepted the message
    soft_bounces: int = 0
    ramps: list[str] = field(default_factory=list)

    @property
    def complaint_rate(self) -> float | None:
        return self.complaints / self.sent if self.sent else None

    @property
    def level(self) -> str:
        """``ok`` | ``warn`` (above 0.1%) | ``over`` (at or above the 0.3% line)."""
        rate = self.complaint_rate
        if rate is None or rate <= COMPLAINT_WARN:
            return "ok"
        return "over" if rate >= COMPLAINT_LIMIT else "warn"

    def summary(self) -> str:
        rate = self.complaint_rate
        text = (f"complaints {self.complaints} of {self.sent} sent"
                + (f" ({rate:.2%})" if rate is not None else ""))
        if self.level == "warn":
            text += " — WARNING: above 0.1%; the limit is 0.3%"
        elif self.level == "over":
            text += " — OVER the 0.3% limit: mailbox providers will filter this sender"
        return text

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "complaint_rate": self.complaint_rate, "level": self.level,
                "limit": COMPLAINT_LIMIT, "warn_above": COMPLAINT_WARN,
                "summary": self.summary()}


def gather_reputation(conn: sa.Connection, names: list[str], since: datetime, until: datetime
                      ) -> dict[str, Reputation]:
    out = {n: Reputation() for n in names}
    sent = (sa.select(runs.c.campaign, sa.func.count())
            .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
            .where(runs.c.campaign.in_(names), deliveries.c.sent_at >= since,
                   deliveries.c.sent_at < until)
            .group_by(runs.c.campaign))
    for campaign, count in conn.execute(sent):
        out[campaign].sent = int(count)
    events = (sa.select(tracking_events.c.campaign, tracking_events.c.kind,
                        tracking_events.c.detail)
              .where(tracking_events.c.campaign.in_(names), tracking_events.c.at >= since,
                     tracking_events.c.at < until,
                     tracking_events.c.kind.in_(("complained", "bounced", "soft_bounce",
                                                 "ramp")))
              .order_by(tracking_events.c.at))
    for campaign, kind, detail in conn.execute(events):
        rep = out[campaign]
        if kind == "complained":
            rep.complaints += 1
        elif kind == "soft_bounce":
            rep.soft_bounces += 1
        elif kind == "ramp":
            rep.ramps.append(detail or "")
        elif (detail or "").startswith(("dsn:", "flufl:")):  # a bounce that came back later
            rep.bounced_later += 1
    return out
