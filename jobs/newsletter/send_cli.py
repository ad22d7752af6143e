"""The body of ``martech send CAMPAIGN --now``: claim or resume a manual run, show progress."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from jobs.newsletter import claims
from jobs.newsletter.runner import send_run
from jobs.newsletter.send import Progress as SendProgress
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.store import runs as run_store
from scheduler.store.runs import Claim
from scheduler.store.tables import runs

log = logging.getLogger("martech.newsletter")


def _claim_or_resume(ctx: ServiceContext, name: str) -> tuple[int, bool]:
    """An unfinished manual run of this campaign is resumed, never started over."""
    now = ctx.clock.now()
    with ctx.begin() as conn:
        for run in run_store.by_status(conn, ["pending", "running", "held"], campaign=name):
            if run.trigger == "manual":
                run_store.set_status(conn, run.id, "running", now)
                # ours now: the service must not adopt it while our heartbeat is fresh
                conn.execute(sa.update(runs).where(runs.c.id == run.id).values(node=ctx.node))
                return run.id, True
        claim = Claim(f"{name}#manual", name, "newsletter", now, f"manual:{now.isoformat()}",
                      trigger="manual")
        won = run_store.claim(conn, [claim], ctx.node, now)
        run_id = won[(claim.schedule_key, claim.scheduled_at)]
        run_store.set_status(conn, run_id, "running", now)
    return run_id, False


async def run_send(state: Any, config: LoadedConfig, campaign: Any, *, quiet: bool,
                   console: Console, signals: Sequence[signal.Signals],
                   clock_s: Callable[[], float]) -> int:
    # A node name of our own (``<node>:cli:<pid>``), heartbeating while we send: the service
    # sees a live CLI send as someone else's, and a restarted CLI sees a killed one as dead.
    ctx = ServiceContext(claims.cli_settings(state.settings), config, state.db())
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, ctx.stopping.set)
    await ctx.in_thread(_beat, ctx, True)
    beating = asyncio.create_task(_heartbeat(ctx))
    try:
        return await _send(ctx, campaign, quiet=quiet, console=console, clock_s=clock_s)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            await ctx.in_thread(_forget, ctx)
        ctx.db.dispose()


def _beat(ctx: ServiceContext, first: bool = False) -> None:
    with ctx.begin() as conn:
        if first:
            claims.prune_dead_cli(conn, ctx.node)
        claims.beat(conn, ctx.node, ctx.clock.now())


def _forget(ctx: ServiceContext) -> None:
    with ctx.begin() as conn:
        claims.forget(conn, ctx.node)


async def _heartbeat(ctx: ServiceContext) -> None:
    while True:
        await asyncio.sleep(ctx.settings.heartbeat_interval_s)
        try:
            await ctx.in_thread(_beat, ctx)
        except sa.exc.SQLAlchemyError:  # a blip; the next beat is soon enough
            log.warning("sender heartbeat failed", extra={"action": "heartbeat"})


async def _send(ctx: ServiceContext, campaign: Any, *, quiet: bool, console: Console,
                clock_s: Callable[[], float]) -> int:
    run_id, resumed = await ctx.in_thread(_claim_or_resume, ctx, campaign.name)
    console.print(f"{'resuming' if resumed else 'starting'} run {run_id} of {campaign.name}",
                  markup=False)
    started = clock_s()
    first_done: list[int] = []
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[info]}"), console=console, disable=quiet,
                   transient=False)
    task = bar.add_task(campaign.name, total=None, info="materialising audience…")

    def on_progress(p: SendProgress) -> None:
        if not first_done:
            first_done.append(p.done)
        elapsed = max(clock_s() - started, 1e-6)
        rate = (p.done - first_done[0]) / elapsed
        remaining = max(p.total - p.skipped - p.done, 0)
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
        info = (f"sent {p.sent}  failed {p.failed}  bounced {p.bounced}  unknown {p.unknown}  "
                f"{rate:.0f} msg/s  ETA {eta}")
        if p.paused:
            info = f"PAUSED ({p.paused}) — `martech resume {campaign.name}` continues  " + info
        bar.update(task, total=max(p.total - p.skipped, 1), completed=p.done, info=info)

    with bar:
        result = await send_run(ctx, campaign, run_id, on_pause="wait", progress=on_progress)
    now = ctx.clock.now()
    if result.status != "interrupted":
        with ctx.begin() as conn:
            run_store.set_status(conn, run_id, result.status, now, detail=result.detail,
                                 stats=result.stats or None)
    s = result.stats
    console.print(f"run {run_id}: {result.status} — sent {s.get('sent', 0)}, failed "
                  f"{s.get('failed', 0)}, bounced {s.get('bounced', 0)}, unknown "
                  f"{s.get('unknown', 0)}, suppressed {s.get('suppressed', 0)}, invalid "
                  f"{s.get('invalid', 0)}, duplicates {s.get('duplicates', 0)}"
                  + (f" ({result.detail})" if result.detail else ""), markup=False)
    if result.status == "interrupted":
        console.print(f"interrupted: run `martech send {campaign.name} --now` again to resume",
                      markup=False)
    return 0 if result.status == "done" else 1
