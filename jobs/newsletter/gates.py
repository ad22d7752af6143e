"""What the send loop checks beside the ledger: the resume ramp, the render budget, and a relay
that cannot be reached or refuses our credentials.

Kept out of ``send.py`` so the loop reads as claim → send → record; each function here is a
decision about the campaign (a rate, a pause), made the same way by the owner and by helpers.
"""

from __future__ import annotations

import logging
from typing import Any

from jobs.newsletter import relay_auth, resume_ramp
from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.ledger import DeliveryRow
from jobs.newsletter.prepare import Prepared, compose
from scheduler.context import ServiceContext
from scheduler.delivery.base import OutgoingMessage, SendOutcome
from scheduler.delivery.budget import TemplateBudgetExceeded
from scheduler.delivery.ratelimit import RateLimiter
from scheduler.errors import MartechError
from scheduler.store import pauses

log = logging.getLogger("martech.newsletter")

# Renders over their budget in a row before the campaign is paused: each one costs a whole
# budget of CPU, and a template that is too slow for three recipients is for the rest.
OVER_BUDGET_PAUSE_AFTER = 3


def load_ramp(ctx: ServiceContext, campaign: NewsletterCampaign, limiter: RateLimiter,
              run_id: int, stats: dict[str, Any]) -> None:
    """After a long pause the rate climbs back gently (``send.ramp``); the ramp's factor
    scales the campaign's shared buckets for this sender."""
    now = ctx.clock.now()
    with ctx.begin() as conn:
        found = resume_ramp.ramp_for(conn, campaign, now)
        ramp = campaign.send.ramp
        limiter.set_ramp(found[0] if found else None,
                         unlimited_rate_per_s=ramp.unlimited_rate_per_s)
        limiter.load(conn, now)
        if found is None:
            return
        stats["ramp"] = {"since": found[0].since.isoformat(),
                         "until": found[0].until.isoformat(), "start": ramp.start}
        if resume_ramp.record(conn, campaign.name, run_id, *found, now):
            log.info("resuming gently after a long pause: %s", found[0].describe(),
                     extra={"job": campaign.name, "run_id": run_id, "action": "ramp"})


def pause_unreachable(ctx: ServiceContext, campaign: str, outcome: SendOutcome) -> None:
    """Every connection failed: pause (``smtp_auth_failed`` when the relay refused our
    credentials — never retried unchanged — else ``smtp_unreachable``)."""
    now = ctx.clock.now()
    with ctx.begin() as conn:
        if outcome.auth_failed:
            relay_auth.pause(conn, campaign, ctx.settings, ctx.config, now,
                             outcome.error or "535")
        else:
            pauses.add(conn, campaign, pauses.SMTP_UNREACHABLE, now,
                       detail=outcome.error or "relay unreachable", by="sender")
    if outcome.auth_failed:
        log.error("SMTP relay refused our credentials; campaign paused, IT alerted",
                  extra={"job": campaign, "action": "smtp_auth_failed"})
    else:
        log.error("SMTP relay unreachable on every connection; campaign paused",
                  extra={"job": campaign, "action": "smtp_unreachable"})


class RenderBudget:
    """Renders a batch; after ``OVER_BUDGET_PAUSE_AFTER`` renders over their budget in a row
    the rest of the batch is released unrendered and the campaign paused, naming why."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.in_a_row = 0
        self.over: str | None = None

    def compose_all(self, batch: list[DeliveryRow]) -> list[OutgoingMessage | SendOutcome]:
        out: list[OutgoingMessage | SendOutcome] = []
        for row in batch:
            if self.over is not None:  # released, sent once the template is fixed
                out.append(SendOutcome(ok=False, attempted=False, error="not rendered"))
                continue
            try:
                out.append(compose(self.prepared, row))
                self.in_a_row = 0
            except MartechError as exc:  # a template or header problem for this row
                out.append(SendOutcome(ok=False, error=str(exc)[:500], permanent=True))
                if isinstance(exc, TemplateBudgetExceeded):
                    self.in_a_row += 1
                    if self.in_a_row >= OVER_BUDGET_PAUSE_AFTER:
                        self.in_a_row = 0
                        self.over = f"{OVER_BUDGET_PAUSE_AFTER} renders in a row: {exc}"
        return out

    def pause_if_over(self, ctx: ServiceContext) -> bool:
        """Pause the campaign (``error_budget``) if renders kept exceeding their budget."""
        if self.over is None:
            return False
        campaign = self.prepared.campaign.name
        with ctx.begin() as conn:
            pauses.add(conn, campaign, pauses.ERROR_BUDGET, ctx.clock.now(), detail=self.over,
                       by="sender")
        log.error("template over its render budget; campaign paused: %s", self.over,
                  extra={"job": campaign, "action": "render_budget"})
        self.over = None
        return True
