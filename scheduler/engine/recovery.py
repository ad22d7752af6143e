"""After a crash: resume interrupted runs, give up those too late, adopt dead nodes' runs.

Never started and past the grace → ``missed``; started and past max delay → ``skipped``; each
given-up run's job kind is told through its optional ``on_abandoned`` hook so it can close its
own books (docs/ARCHITECTURE.md, "The engine").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from scheduler.clock import utc
from scheduler.context import ServiceContext
from scheduler.engine.execute import OUTAGES, move_run
from scheduler.engine.holds import RELEASED, Abandoned
from scheduler.engine.planning import effective_grace
from scheduler.kinds import Registry, ScheduleSpec
from scheduler.store import heartbeats
from scheduler.store import runs as run_store
from scheduler.store.runs import RunRow
from scheduler.store.tables import runs as run_table

log = logging.getLogger("martech.engine")

HEARTBEATS_TO_DEATH = 4  # a node whose heartbeat is this many intervals old is dead


class Recovery:
    def __init__(self, ctx: ServiceContext, registry: Registry,
                 specs: Callable[[], dict[str, ScheduleSpec]], abandoned: Abandoned) -> None:
        self.ctx = ctx
        self.registry = registry
        self.specs = specs
        self.abandoned = abandoned

    def interrupted_runs(self) -> list[int]:
        """Runs left pending/running by a crash of this node (or of a node now dead) that
        may still resume; the others are given up here."""
        with self.ctx.begin() as conn:
            stale = run_store.by_status(conn, ["pending", "running"])
        now = self.ctx.clock.now()
        out = []
        for run in stale:
            foreign = run.node not in (None, self.ctx.node)
            if foreign and (not self._node_dead(str(run.node)) or not self._take_over(run)):
                continue
            if foreign:
                run = dataclasses.replace(run, node=self.ctx.node)
            if self._give_up_if_late(run, now):
                continue
            log.info("resuming interrupted run", extra={
                "job": run.campaign, "run_id": run.id, "action": "resume"})
            out.append(run.id)
        return out

    def _give_up_if_late(self, run: RunRow, now: datetime) -> bool:
        late = self.too_late(run, now)
        if late is None:
            return False
        status, detail = late
        with self.ctx.begin() as conn:
            moved = move_run(conn, run, status, now, self.ctx.node, detail=detail)
        if moved:
            self.abandoned.append((dataclasses.replace(run, status=status, detail=detail),
                                   detail))
            log.warning("interrupted run given up: %s", detail, extra={
                "job": run.campaign, "run_id": run.id, "action": status})
        return True

    def too_late(self, run: RunRow, now: datetime) -> tuple[str, str] | None:
        """``(status, detail)`` when an interrupted run is too late to resume, else None."""
        spec = self.specs().get(run.schedule_key)
        if spec is None or run.trigger != "schedule":
            return None  # manual runs are exempt; a removed campaign is skipped at execute
        late = now - utc(run.scheduled_at)
        never_started = run.started_at is None and not (run.detail or "").startswith(RELEASED)
        if never_started:
            grace = effective_grace(spec)
            if late > grace:
                return "missed", (f"missed: interrupted before it started and {late} late "
                                  f"(grace {grace})")
        elif late > spec.max_delay:
            return "skipped", (f"skipped: interrupted and {late} late "
                               f"(max delay {spec.max_delay})")
        return None

    async def drain_abandoned(self) -> None:
        """Let each given-up run's job kind close its own books (its optional hook)."""
        retry: list[tuple[RunRow, str]] = []
        while self.abandoned:
            run, reason = self.abandoned.popleft()
            job = self.registry.kinds.get(run.kind)
            hook = getattr(job, "on_abandoned", None)
            campaign = self.ctx.config.campaigns.get(run.campaign)
            if hook is None or campaign is None:
                continue
            extra = {"action": "abandon", "job": run.campaign, "run_id": run.id}
            try:
                await hook(self.ctx, campaign, run, reason)
            except OUTAGES:
                log.warning("on_abandoned hook met an outage; retried later", exc_info=True,
                            extra=extra)
                retry.append((run, reason))
            except Exception:
                log.exception("on_abandoned hook failed", extra=extra)
        self.abandoned.extend(retry)  # drained again on the next held-loop pass

    def _take_over(self, run: RunRow) -> bool:
        """Adopt a dead node's run; the conditional update lets only one survivor win."""
        stmt = (sa.update(run_table)
                .where(run_table.c.id == run.id, run_table.c.node == run.node)
                .values(node=self.ctx.node))
        with self.ctx.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def _node_dead(self, node: str) -> bool:
        limit = timedelta(seconds=self.ctx.settings.heartbeat_interval_s * HEARTBEATS_TO_DEATH)
        with self.ctx.begin() as conn:
            for row in heartbeats.latest(conn):
                if row.node == node and self.ctx.clock.now() - utc(row.at) < limit:
                    return False
        return True
