"""The scheduling engine: APScheduler wakes the process, the database decides.

The engine composes one part per job: ``wake`` (APScheduler), ``claims`` (occurrences become
run rows), ``execute`` (one run, with pauses and retries), ``holds`` (held runs released or
skipped), ``recovery`` (crash and dead-node recovery). See docs/ARCHITECTURE.md, "The engine".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime

from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.engine.claims import Claimed, ClaimedRun, ClaimLoop
from scheduler.engine.execute import Executor, RunStarted
from scheduler.engine.holds import HeldRuns
from scheduler.engine.planning import next_fire_times
from scheduler.engine.recovery import Recovery
from scheduler.engine.wake import Waker
from scheduler.gcpause import freeze_heap, gc_paused, thaw_heap
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.store import heartbeats
from scheduler.store import runs as run_store
from scheduler.store.runs import Claim, RunRow
from scheduler.store.signals import PAUSES

log = logging.getLogger("martech.engine")

# Held runs are looked at when a pause changes (signals: LISTEN/NOTIFY on PostgreSQL, this
# process's own commits) and at least this often: the fallback when no signal can arrive.
HELD_POLL_S = 2.0
LOOP_STOP_TIMEOUT_S = 5.0


class Engine:
    def __init__(self, ctx: ServiceContext, registry: Registry, *,
                 on_run_started: RunStarted | None = None,
                 on_claimed: Claimed | None = None) -> None:
        self.ctx = ctx
        self.registry = registry
        self.specs: dict[str, ScheduleSpec] = {}
        abandoned: collections.deque[tuple[RunRow, str]] = collections.deque()
        self.waker = Waker(ctx.clock, self._on_wake)
        self.claims = ClaimLoop(ctx, self._specs, self._spawn_claimed, on_claimed)
        self.executor = Executor(ctx, registry, self._specs, on_run_started)
        self.holds = HeldRuns(ctx, self._specs, abandoned)
        self.recovery = Recovery(ctx, registry, self._specs, abandoned)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.loops: list[asyncio.Task[None]] = []

    def _specs(self) -> dict[str, ScheduleSpec]:
        return self.specs  # read afresh: reload swaps the dict

    @property
    def caught_up(self) -> asyncio.Event:
        """Set once start-up's catch-up claim has committed."""
        return self.claims.caught_up

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        with gc_paused():  # thousands of specs and schedules: no cycles to look for
            self.specs = self.registry.specs(self.ctx.config)
            self.waker.sync(self.specs)
        freeze_heap()  # long-lived from here: later collections need not walk it
        # Beat before claiming anything: a node that dies right after its first claim has
        # left a heartbeat to go stale, so the others can tell it is dead and adopt its runs.
        await self.ctx.in_thread(self.heartbeat)
        # Interrupted runs are listed before the claim loop starts, so a run claimed (and
        # perhaps finished) by this start-up's own catch-up is never mistaken for one.
        interrupted = await self.ctx.in_thread(self.recovery.interrupted_runs)
        self.waker.start()
        self.loops = [
            asyncio.create_task(self.claims.run(), name="claim-loop"),
            asyncio.create_task(self._held_loop(), name="held-loop"),
            asyncio.create_task(self._liveness_loop(), name="liveness-loop"),
        ]
        # Catch up everything missed while we were down, then resume interrupted runs.
        self.claims.request(self.specs)
        for run_id in interrupted:
            self.spawn(run_id)
        await self.recovery.drain_abandoned()

    async def stop(self, timeout_s: float) -> None:
        """Stop taking new work; give in-flight runs ``timeout_s`` to checkpoint."""
        self.ctx.stopping.set()
        self.claims.wake.set()  # the claim loop sees `stopping` and returns
        self.waker.stop()
        # Let the loops return on their own: cancelling one while its database work runs in a
        # worker thread would leave that thread holding a connection past engine disposal.
        if self.loops:
            _done, stuck = await asyncio.wait(self.loops,
                                              timeout=min(timeout_s, LOOP_STOP_TIMEOUT_S))
            for task in stuck:
                task.cancel()
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            log.info("waiting for %d running job(s) to checkpoint", len(pending),
                     extra={"action": "shutdown"})
            _done, still = await asyncio.wait(pending, timeout=timeout_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
        await asyncio.gather(*self.loops, return_exceptions=True)
        self.claims.close()
        thaw_heap()

    def reload(self, config: LoadedConfig | None = None) -> None:
        """Swap schedules to match ``config`` (default ``ctx.config``); cursors are untouched.

        The specs are built before anything changes: if a job kind raises, the old config
        and schedules stay in place.
        """
        specs = self.registry.specs(config or self.ctx.config)
        if config is not None:
            self.ctx.config = config
        self.specs = specs
        self.waker.sync(self.specs)
        freeze_heap()
        # Catch-up is cursor-based, so re-adding jobs never drops an occurrence (#696).
        self.claims.request(self.specs)

    def next_fire_times(self) -> dict[str, datetime | None]:
        return next_fire_times(self.specs, self.ctx.clock.now())

    # -- waking, spawning ------------------------------------------------------------------

    async def _on_wake(self, keys: list[str]) -> None:
        self.claims.request(keys)

    def claim_due(self, specs: Iterable[ScheduleSpec]) -> list[ClaimedRun]:
        """Claim ``specs`` now, in this thread (tests and ``run_now``)."""
        return self.claims.claim_due(specs)

    def _spawn_claimed(self, run: ClaimedRun) -> None:
        self.spawn(run.run_id, run.started)

    def spawn(self, run_id: int, started: RunRow | None = None) -> None:
        """Execute ``run_id`` in a task of its own; ``started``: the claim already moved it to
        running (see ``claims._start_unpaused``)."""
        if run_id in self._tasks and not self._tasks[run_id].done():
            return
        # execute() retries every error itself, so no task exception goes unretrieved.
        task = asyncio.create_task(self._execute_task(run_id, started), name=f"run-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(run_id, None))

    async def _execute_task(self, run_id: int, started: RunRow | None) -> None:
        await self.executor.execute(run_id, started=started)

    async def execute(self, run_id: int) -> RunResult | None:
        return await self.executor.execute(run_id)

    # -- held runs, heartbeat, adoption ---------------------------------------------------

    async def _held_loop(self) -> None:
        """Release held runs whose campaign is no longer paused; skip those past max delay.

        Woken by pause changes from any node (``ctx.signals``), polling as the fallback.
        """
        signals = self.ctx.signals
        while not self.ctx.stopping.is_set():
            mark = signals.mark(PAUSES)  # before reading: a change meanwhile wakes us at once
            try:
                for run_id in await self.ctx.in_thread(self.holds.release):
                    self.spawn(run_id)
                await self.recovery.drain_abandoned()
            except Exception:
                log.exception("held-run check failed", extra={"action": "held"})
            await signals.wait(mark, HELD_POLL_S, stop=self.ctx.stopping)

    async def _liveness_loop(self) -> None:
        """Every heartbeat interval: beat, then adopt the runs of nodes the database's clock
        says are dead (ARCHITECTURE.md, invariant 8)."""
        interval_s = self.ctx.settings.heartbeat_interval_s
        while not self.ctx.stopping.is_set():
            try:
                await self.ctx.in_thread(self.heartbeat)
                for run_id in await self.ctx.in_thread(self.recovery.adopt_orphans):
                    self.spawn(run_id)
                await self.recovery.drain_abandoned()
            except Exception:
                log.exception("heartbeat or adoption failed; retrying",
                              extra={"action": "liveness"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stopping.wait(), interval_s)

    def heartbeat(self) -> None:
        with self.ctx.begin() as conn:
            heartbeats.beat(conn, self.ctx.node, "service",
                            info=f"{len(self.specs)} schedules")

    async def run_now(self, campaign: str) -> int | None:
        """``martech run-job``: claim a manual occurrence through the same claim path."""
        now = self.ctx.clock.now()
        kind = self.ctx.config.campaigns[campaign].kind
        claim = Claim(f"{campaign}#manual", campaign, kind, now,
                      f"manual:{now.isoformat()}", trigger="manual")

        def _claim() -> int | None:
            with self.ctx.begin() as conn:
                won = run_store.claim(conn, [claim], self.ctx.node, now)
            return won.get((claim.schedule_key, claim.scheduled_at))

        run_id = await self.ctx.in_thread(_claim)
        if run_id is not None:
            await self.executor.execute(run_id)
        return run_id
