"""Every node helps send (issue 9, point 4a): a background component on each service node.

The engine runs a newsletter run on the node that claimed it (its owner). This component finds
the runs that other nodes own and that have work anyone may take — pending rows that are due,
or a claim whose lease expired — in a campaign with no pause reason, and works each with the
same claim loop as the owner (``Sender(helper=True)``): batches claimed with ``FOR UPDATE SKIP
LOCKED`` under leases, so every node up sends a share. A helper never materialises a run and
never changes its status or stats; the owner finishes the run once every row is recorded.
Pause changes are seen between batches, like the owner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

import sqlalchemy as sa

from jobs.newsletter import ledger
from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.runner import send_run
from scheduler.context import ServiceContext
from scheduler.store import pauses
from scheduler.store.dbclock import db_now
from scheduler.store.tables import delivery_claims, runs

log = logging.getLogger("martech.newsletter")

HELP_POLL_S = 1.0
FAILED_COOLDOWN_S = 30.0  # a run whose helper failed (e.g. a template error) is left alone


def helpable_runs(conn: sa.Connection, node: str, now: datetime) -> list[tuple[int, str]]:
    """``(run id, campaign)`` of running newsletter runs owned by another node, materialised,
    not paused, with a due pending row or an expired claim (``now``: the database's clock)."""
    pending = sa.exists().where(ledger.due_pending(runs.c.id, now))
    expired = sa.exists().where(delivery_claims.c.run_id == runs.c.id,
                                delivery_claims.c.expires_at < now)
    stmt = (sa.select(runs.c.id, runs.c.campaign, runs.c.stats)
            .where(runs.c.kind == "newsletter", runs.c.status == "running",
                   sa.or_(runs.c.node.is_(None), runs.c.node != node),
                   sa.or_(pending, expired))
            .order_by(runs.c.id))
    found = []
    for run_id, campaign, stats in conn.execute(stmt):
        if (stats or {}).get("materialised") and not pauses.is_paused(conn, campaign):
            found.append((int(run_id), str(campaign)))
    return found


def _find(ctx: ServiceContext) -> list[tuple[int, NewsletterCampaign]]:
    with ctx.begin() as conn:
        found = helpable_runs(conn, ctx.node, db_now(conn))
    out = []
    for run_id, name in found:
        campaign = ctx.config.campaigns.get(name)
        if isinstance(campaign, NewsletterCampaign) and campaign.enabled:
            out.append((run_id, campaign))
    return out


async def _help(ctx: ServiceContext, campaign: NewsletterCampaign, run_id: int) -> bool:
    """Work the run until nothing is left to claim; False when it failed."""
    extra = {"job": campaign.name, "run_id": run_id, "action": "help"}
    try:
        result = await send_run(ctx, campaign, run_id, on_pause="return", helper=True)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("helping run %d failed", run_id, extra=extra)
        return False
    if result.status == "failed":
        log.warning("cannot help run %d: %s", run_id, result.detail, extra=extra)
        return False
    return True


async def send_helper(ctx: ServiceContext) -> None:
    """The component: look for runs to help every ``HELP_POLL_S``, one helper per run."""
    helping: dict[int, asyncio.Task[bool]] = {}
    cooldown: dict[int, float] = {}
    try:
        while not ctx.stopping.is_set():
            for run_id, task in list(helping.items()):
                if task.done():
                    del helping[run_id]
                    if task.cancelled() or not task.result():
                        cooldown[run_id] = ctx.clock.monotonic() + FAILED_COOLDOWN_S
            try:
                found = await ctx.in_thread(_find, ctx)
            except sa.exc.SQLAlchemyError:
                log.warning("looking for runs to help failed", exc_info=True,
                            extra={"action": "help"})
                found = []
            for run_id, campaign in found:
                if run_id in helping or cooldown.get(run_id, 0.0) > ctx.clock.monotonic():
                    continue
                helping[run_id] = asyncio.create_task(_help(ctx, campaign, run_id),
                                                      name=f"help-run-{run_id}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), HELP_POLL_S)
        # Stopping: each helper finishes the batch it holds (it sees `stopping` between
        # batches), within the service's shutdown time.
        await asyncio.gather(*helping.values(), return_exceptions=True)
    finally:
        for task in helping.values():
            task.cancel()

