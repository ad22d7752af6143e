"""After a crash: resume interrupted runs, give up those too late, adopt dead nodes' runs.

At start a node resumes what it left pending/running; all the time (every heartbeat) it adopts
the runs of nodes the database's clock says are dead (``heartbeats.dead_nodes``), so a
survivor takes over without a restart. Every resumption or adoption is a ``take_over``: the
run's lease generation is bumped, and the former holder's late writes are refused.

Never started and past the grace → ``missed``; started and past max delay → ``skipped``; each
given-up run's job kind is told through its optional ``on_abandoned`` hook so it can close its
own books (docs/ARCHITECTURE.md, "The engine").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime

from scheduler.clock import utc
from scheduler.context import ServiceContext
from scheduler.engine.execute import OUTAGES, move_run
from scheduler.engine.holds import RELEASED, Abandoned
from scheduler.engine.planning import effective_grace
from scheduler.kinds import Registry, ScheduleSpec
from scheduler.store import heartbeats
from scheduler.store import runs as run_store
from scheduler.store.runs import RunRow

log = logging.getLogger("martech.engine")


class Recovery:
    def __init__(self, ctx: ServiceContext, registry: Registry,
                 specs: Callable[[], dict[str, ScheduleSpec]], abandoned: Abandoned) -> None:
        self.ctx = ctx
        self.registry = registry
        self.specs = specs
        self.abandoned = abandoned

    @property
    def stale_after_s(self) -> float:
        return heartbeats.stale_after_s(self.ctx.settings.heartbeat_interval_s)

    def interrupted_runs(self) -> list[int]:
        """At start: runs left pending/running by a crash of this node (or of a node now
        dead) that may still resume, taken over; the others are given up here."""
        me = self.ctx.node
        with self.ctx.begin() as conn:
            stale = run_store.by_status(conn, ["pending", "running"])
            dead = heartbeats.dead_nodes(conn, self.stale_after_s,
                                         among={str(r.node) for r in stale
                                                if r.node not in (None, me)})
        return self._take_over_all([r for r in stale if r.node in (None, me) or r.node in dead])

    def adopt_orphans(self) -> list[int]:
        """While running: the runs of nodes dead by the database's clock, taken over (their
        fencing token bumped); returns those to execute here."""
        with self.ctx.begin() as conn:
            dead = heartbeats.dead_nodes(conn, self.stale_after_s) - {self.ctx.node}
            orphans = run_store.active_of(conn, dead, ("pending", "running"))
        return self._take_over_all(orphans)

    def _take_over_all(self, candidates: list[RunRow]) -> list[int]:
        now = self.ctx.clock.now()
        out = []
        for candidate in candidates:
            with self.ctx.begin() as conn:
                run = run_store.take_over(conn, candidate, self.ctx.node)
            if run is None:
                continue  # another survivor (or the owner, back) moved it first
            if self._give_up_if_late(run, now):
                continue
            extra = {"job": run.campaign, "run_id": run.id, "lease_gen": run.lease_gen}
            if candidate.node in (None, self.ctx.node):
                log.info("resuming interrupted run", extra={**extra, "action": "resume"})
            else:
                log.warning("adopted the run of dead node %s", candidate.node,
                            extra={**extra, "action": "adopt", "from_node": candidate.node})
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
