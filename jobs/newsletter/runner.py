"""One newsletter run: prepare the campaign, open the transport, let the sender work the ledger."""

from __future__ import annotations

from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.prepare import Prepared, prepare
from jobs.newsletter.send import ProgressFn, Sender
from scheduler.context import ServiceContext
from scheduler.delivery.base import Transport
from scheduler.delivery.factory import make_transport
from scheduler.errors import MartechError
from scheduler.kinds import RunResult
from scheduler.privacy import ForgottenKeyMissing

# Tests and benchmarks may put a ready transport here; the job then neither creates nor closes it.
TRANSPORT_OVERRIDE = "newsletter_transport"


def _prepare(campaign: NewsletterCampaign, ctx: ServiceContext, run_id: int) -> Prepared:
    return prepare(campaign, ctx.config, ctx.settings, run_id=run_id)


async def send_run(ctx: ServiceContext, campaign: NewsletterCampaign, run_id: int, *,
                   on_pause: str, progress: ProgressFn | None = None,
                   helper: bool = False) -> RunResult:
    """Send (or resume) run ``run_id`` of ``campaign`` through the configured transport;
    ``helper``: as another node helping its owner (``jobs/newsletter/helper.py``)."""
    try:
        # In a thread: compiling and the run-once render of the shared part are budgeted CPU.
        prepared = await ctx.in_thread(_prepare, campaign, ctx, run_id)
    except MartechError as exc:
        return RunResult("failed", f"cannot prepare the campaign: {exc}")
    override: Transport | None = ctx.extras.get(TRANSPORT_OVERRIDE)
    transport = override or make_transport(ctx.settings, connections=campaign.send.connections)
    try:
        sender = Sender(ctx, prepared, run_id, transport, on_pause=on_pause, progress=progress,
                        helper=helper)
        return await sender.run()
    except ForgottenKeyMissing as exc:  # fail closed: a forgotten person could be mailed
        return RunResult("failed", str(exc))
    finally:
        if override is None:
            await transport.close()
