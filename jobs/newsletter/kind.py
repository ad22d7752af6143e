"""The newsletter job kind: a campaign file + a template → e-mail to an audience, on schedule."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from jobs.newsletter import (
    cli,
    dkim_cli,
    http_tracking,
    http_unsubscribe,
    inbound,
    ledger,
    links,
)
from jobs.newsletter.config import RECIPIENT, NewsletterCampaign
from jobs.newsletter.helper import send_helper
from jobs.newsletter.probe import relay_probe
from jobs.newsletter.runner import TRANSPORT_OVERRIDE, send_run
from jobs.newsletter.validate import newsletter_warnings, validate_newsletter
from jobs.newsletter.zones import ZONE_SPREAD
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.errors import Problem
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.settings import Settings
from scheduler.store.runs import RunRow

log = logging.getLogger("martech.newsletter")

__all__ = ["TRANSPORT_OVERRIDE", "NewsletterJob", "register", "send_run"]


class NewsletterJob:
    kind = "newsletter"
    campaign_model = NewsletterCampaign

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        assert isinstance(campaign, NewsletterCampaign)
        # Per-recipient zones: the run spans every zone's slot, so the engine's limits on the
        # run reach over that spread; each row's own lateness is judged in jobs.newsletter.zones.
        spread = ZONE_SPREAD if campaign.schedule.timezone == RECIPIENT else timedelta(0)
        return [ScheduleSpec(
            key=campaign.name, campaign=campaign.name, kind=self.kind,
            schedule=campaign.schedule.to_schedule(),
            misfire_grace=campaign.schedule.misfire_grace + spread,
            missed=campaign.schedule.missed, on_pause=campaign.send.on_pause,
            max_delay=campaign.send.max_delay + spread)]

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        return await send_run(ctx, campaign, run.id, on_pause="return")

    async def on_abandoned(self, ctx: ServiceContext, campaign: Any, run: RunRow,
                           reason: str) -> None:
        """The engine gave up on ``run`` (missed, or skipped past max_delay) without it
        finishing: its pending rows are marked ``skipped`` so none waits forever."""

        def _skip() -> int:
            with ctx.begin() as conn:
                return ledger.skip_pending(conn, run.id, reason)

        skipped = await ctx.in_thread(_skip)
        if skipped:
            log.info("%d pending deliveries skipped: %s", skipped, reason,
                     extra={"action": "abandon", "job": run.campaign, "run_id": run.id,
                            "count": skipped})

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings) -> list[Problem]:
        assert isinstance(campaign, NewsletterCampaign)
        return validate_newsletter(campaign, config, settings)

    def campaign_links(self, campaign: Any, config: LoadedConfig, settings: Settings
                       ) -> list[str]:
        """The links a run would check (``martech validate --links``)."""
        assert isinstance(campaign, NewsletterCampaign)
        return links.audience_links(campaign, config, settings).urls


def register(registry: Registry) -> None:
    registry.add_kind(NewsletterJob())
    registry.cli += [cli.register, dkim_cli.register]
    registry.warnings.append(newsletter_warnings)
    registry.components["newsletter-relay-probe"] = relay_probe
    registry.components["newsletter-send-helper"] = send_helper
    registry.worker_components["newsletter-send-helper"] = send_helper
    registry.components["newsletter-inbound-smtp"] = inbound.inbound_smtp
    registry.components["newsletter-imap-poller"] = inbound.imap_mailbox
    registry.http_routes += [http_unsubscribe.add_routes, http_tracking.add_routes]
