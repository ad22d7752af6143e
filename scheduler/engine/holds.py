"""Held runs: released when their campaign is no longer paused, skipped past max delay.

A run that fell due while its campaign was paused waits as ``held`` (docs/ARCHITECTURE.md,
"Invariants" 4). Each move is conditional on the run still being held, so when two nodes
release at once only one of them gets (and executes) the run.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from datetime import timedelta

from scheduler.clock import utc
from scheduler.context import ServiceContext
from scheduler.engine.execute import move_run
from scheduler.kinds import ScheduleSpec
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.runs import RunRow

log = logging.getLogger("martech.engine")

RELEASED = "released after hold"  # detail prefix of a held run moved back to pending
DEFAULT_MAX_DELAY = timedelta(days=1)

Abandoned = collections.deque[tuple[RunRow, str]]


class HeldRuns:
    def __init__(self, ctx: ServiceContext, specs: Callable[[], dict[str, ScheduleSpec]],
                 abandoned: Abandoned) -> None:
        self.ctx = ctx
        self.specs = specs
        self.abandoned = abandoned  # runs given up, for their kinds' on_abandoned hooks

    def release(self) -> list[int]:
        """Move unpaused held runs to pending (returned: ours to spawn) or skip them."""
        now = self.ctx.clock.now()
        ready: list[int] = []
        skipped: list[tuple[RunRow, str]] = []
        specs = self.specs()
        with self.ctx.begin() as conn:
            for run in run_store.by_status(conn, ["held"]):
                if pauses.is_paused(conn, run.campaign):
                    continue
                spec = specs.get(run.schedule_key)
                max_delay = spec.max_delay if spec else DEFAULT_MAX_DELAY
                if run.trigger == "schedule" and now - utc(run.scheduled_at) > max_delay:
                    detail = f"skipped: held past max delay {max_delay}"
                    if move_run(conn, run, "skipped", now, self.ctx.node, detail=detail):
                        skipped.append((dataclasses.replace(run, status="skipped",
                                                            detail=detail), detail))
                        log.info("held run skipped", extra={
                            "action": "skip", "job": run.campaign, "run_id": run.id})
                    continue
                if move_run(conn, run, "pending", now, self.ctx.node,
                            detail=f"{RELEASED} ({run.detail or ''})"):
                    ready.append(run.id)
        self.abandoned.extend(skipped)  # committed: now the kinds may close their books
        return ready
