"""The newsletter job kind: a campaign file + a template → e-mail to an audience, on schedule."""

from __future__ import annotations

import logging
from typing import Any

from jobs.base import Registry, RunResult, ScheduleSpec
from jobs.newsletter_prepare import prepare
from jobs.newsletter_send import ProgressFn, Sender
from scheduler.config.campaigns import NewsletterCampaign
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.delivery.base import Transport
from scheduler.delivery.factory import make_transport
from scheduler.errors import MartechError, Problem
from scheduler.settings import Settings
from scheduler.store import deliveries as ledger
from scheduler.store.runs import RunRow

log = logging.getLogger("martech.newsletter")

# Tests and benchmarks may put a ready transport here; the job then neither creates nor closes it.
TRANSPORT_OVERRIDE = "newsletter_transport"


class NewsletterJob:
    kind = "newsletter"

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        assert isinstance(campaign, NewsletterCampaign)
        return [ScheduleSpec(
            key=campaign.name, campaign=campaign.name, kind=self.kind,
            schedule=campaign.schedule.to_schedule(),
            misfire_grace=campaign.schedule.misfire_grace, missed=campaign.schedule.missed,
            on_pause=campaign.send.on_pause, max_delay=campaign.send.max_delay)]

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
        from jobs.newsletter_validate import validate_newsletter

        assert isinstance(campaign, NewsletterCampaign)
        return validate_newsletter(campaign, config, settings)


async def send_run(ctx: ServiceContext, campaign: NewsletterCampaign, run_id: int, *,
                   on_pause: str, progress: ProgressFn | None = None) -> RunResult:
    """Send (or resume) run ``run_id`` of ``campaign`` through the configured transport."""
    try:
        prepared = prepare(campaign, ctx.config, ctx.settings, run_id=run_id)
    except MartechError as exc:
        return RunResult("failed", f"cannot prepare the campaign: {exc}")
    override: Transport | None = ctx.extras.get(TRANSPORT_OVERRIDE)
    transport = override or make_transport(ctx.settings, connections=campaign.send.connections)
    try:
        sender = Sender(ctx, prepared, run_id, transport, on_pause=on_pause, progress=progress)
        return await sender.run()
    finally:
        if override is None:
            await transport.close()


def register(registry: Registry) -> None:
    from jobs import newsletter_cli
    from jobs.newsletter_probe import relay_probe

    registry.add_kind(NewsletterJob())
    registry.cli.append(newsletter_cli.register)
    registry.components["newsletter-relay-probe"] = relay_probe
