"""Executing one owned run: honour pauses, call the job kind, record the outcome.

A dependency outage inside the job (``OUTAGES``) is not the job's failure: the run stays
"running" and is executed again after a backoff (jobs resume where they stopped). An error in
the engine's own bookkeeping is retried the same way (docs/ARCHITECTURE.md, "The engine").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from scheduler.context import ServiceContext
from scheduler.engine.outcomes import OutcomeWriter
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.runs import RunRow
from scheduler.store.tables import runs as run_table

log = logging.getLogger("martech.engine")

# A job raising one of these met a dependency outage (database, network), not a bug of its
# own: the run stays "running" and is retried after a backoff (jobs are resumable). Not all
# of OSError: a missing file or a permission error is a mistake to report, not to wait out.
OUTAGES: tuple[type[BaseException], ...] = (DBAPIError, ConnectionError, TimeoutError,
                                            socket.gaierror)

# Called just before a job kind starts a run, with the run and the time it started: the hook
# benchmarks measure "due -> job started" through. It must keep nothing and return at once.
RunStarted = Callable[[RunRow, datetime], None]


def move_run(conn: sa.Connection, run: RunRow, status: str, now: datetime, node: str, *,
             detail: str | None = None) -> RunRow | None:
    """Move ``run`` from the status, owner and lease it was read with; ``node`` now owns it.

    Conditional, so of two nodes (or tasks) acting on the same read only one wins, and a node
    whose run was adopted meanwhile (its lease generation moved on) loses. A move to another
    owner bumps the lease generation. Returns the moved row (RETURNING tells, whatever
    rowcount the driver reports), or None.
    """
    values: dict[str, Any] = {"status": status, "node": node}
    if node != run.node:
        values["lease_gen"] = run_table.c.lease_gen + 1
    if status == "running":
        values["started_at"] = now
    if status in run_store.FINISHED:
        values["finished_at"] = now
    if detail is not None:
        values["detail"] = detail
    stmt = (sa.update(run_table)
            .where(run_table.c.id == run.id, run_table.c.status == run.status,
                   run_store.fenced(run.fence))
            .values(**values).returning(run_table))
    row = conn.execute(stmt).first()
    return RunRow.from_row(row) if row else None


class Executor:
    retry_first_s = 1.0  # backoff after an outage or a bookkeeping error, doubling ...
    retry_max_s = 60.0  # ... to this: an outage may last, the run is never given up

    def __init__(self, ctx: ServiceContext, registry: Registry,
                 specs: Callable[[], dict[str, ScheduleSpec]],
                 on_started: RunStarted | None = None) -> None:
        self.ctx = ctx
        self.registry = registry
        self.specs = specs
        self.on_started = on_started
        # Outcomes whose recording failed, with the run as it was executed (its fence).
        self._unrecorded: dict[int, tuple[RunRow, RunResult]] = {}
        # Read afresh on each write, so a test can wrap finish_all.
        self.outcomes = OutcomeWriter(ctx, lambda outcomes: self.finish_all(outcomes))

    async def execute(self, run_id: int, *, started: RunRow | None = None
                      ) -> RunResult | None:
        """Run ``run_id``, retrying outages and bookkeeping errors until done or stopping.

        ``started``: the run as its claim inserted it, already ``running`` and ours — the
        first attempt then skips re-reading it and the pause check the claim just made.
        Returns None when nothing was executed (held, finished, owned elsewhere, stopping).
        """
        extra: dict[str, Any] = {"job": None, "run_id": run_id}
        delay_s = self.retry_first_s
        while True:
            try:
                return await self._attempt(run_id, extra, started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage = isinstance(exc, OUTAGES)
                log.warning("run attempt failed (%s); the run stays active, retry in %.1fs",
                            "dependency outage" if outage else "engine error", delay_s,
                            exc_info=True, extra={**extra, "action": "run_retry"})
            started = None  # a retry re-reads the run and its pause state
            if not await self._backoff(delay_s):
                log.info("stopping: run left to resume on the next start",
                         extra={**extra, "action": "interrupt"})
                return None
            delay_s = min(delay_s * 2, self.retry_max_s)

    async def _attempt(self, run_id: int, extra: dict[str, Any], started: RunRow | None
                       ) -> RunResult | None:
        unrecorded = self._unrecorded.get(run_id)
        if unrecorded is not None:  # the job finished; only recording its outcome failed
            await self._record(*unrecorded, extra)
            return unrecorded[1]
        loaded = started or await self.ctx.in_thread(self.load_run, run_id)
        if loaded is None:
            return None
        extra["job"] = loaded.campaign
        campaign = self.ctx.config.campaigns.get(loaded.campaign)
        job = self.registry.kinds.get(loaded.kind)
        if campaign is None or job is None:
            await self.ctx.in_thread(self.finish, loaded, RunResult(
                "skipped", "campaign no longer in the configuration"))
            log.warning("run skipped: campaign removed", extra={**extra, "action": "skip"})
            return None
        run = loaded if started is not None else await self.ctx.in_thread(
            self.hold_if_paused, loaded, self.specs().get(loaded.schedule_key))
        if run is None:
            return None
        log.info("run started", extra={**extra, "action": "run_start", "kind": run.kind})
        if self.on_started is not None:
            self.on_started(run, self.ctx.clock.now())
        try:
            result = await job.execute(self.ctx, campaign, run)
        except asyncio.CancelledError:
            log.warning("run interrupted by shutdown", extra={**extra, "action": "interrupt"})
            raise
        except OUTAGES:
            raise  # not the job's fault: execute() retries, the run stays "running"
        except Exception as exc:
            log.exception("run failed", extra={**extra, "action": "run_failed"})
            result = RunResult("failed", f"{type(exc).__name__}: {exc}")
        await self._record(run, result, extra)
        return result

    async def _record(self, run: RunRow, result: RunResult, extra: dict[str, Any]) -> None:
        # Kept until recorded, so a retry records the outcome instead of re-running the job.
        self._unrecorded[run.id] = (run, result)
        # "interrupted": nothing to write, it stays running, resumed on the next start
        recorded = result.status == "interrupted" or await self.outcomes.record(run, result)
        del self._unrecorded[run.id]
        if recorded:
            log.info("run %s", result.status, extra={**extra, "action": "run_end",
                                                      "status": result.status, **result.stats})

    async def _backoff(self, delay_s: float) -> bool:
        """Wait ``delay_s`` unless the service stops first; True to carry on."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ctx.stopping.wait(), delay_s)
        return not self.ctx.stopping.is_set()

    def load_run(self, run_id: int) -> RunRow | None:
        with self.ctx.begin() as conn:
            return run_store.get(conn, run_id)

    def hold_if_paused(self, run: RunRow, spec: ScheduleSpec | None) -> RunRow | None:
        """A run due while its campaign is paused is held, or skipped per policy.

        Returns the run as moved to ``running`` (its fence is what the outcome is recorded
        under), or None when it must not execute now: held, skipped, finished meanwhile, owned
        by another node, or moved by someone else between our read and our update.
        """
        now = self.ctx.clock.now()
        extra = {"job": run.campaign, "run_id": run.id}
        with self.ctx.begin() as conn:
            current = run_store.get(conn, run.id)
            if current is None or current.status not in run_store.ACTIVE:
                return None  # finished meanwhile (e.g. resumed and done twice): never re-run
            if current.node not in (None, self.ctx.node):
                log.info("run owned by node %s; not executed here", current.node,
                         extra={**extra, "action": "not_owner"})
                return None
            reasons = pauses.reasons(conn, run.campaign)
            if not reasons:
                return move_run(conn, current, "running", now, self.ctx.node)
            if current.status == "held":
                return None
            why = ", ".join(p.reason for p in reasons)
            policy = spec.on_pause if spec else "hold"
            status, detail = (("skipped", f"paused: {why}") if policy == "skip"
                              else ("held", f"held: paused ({why})"))
            if move_run(conn, current, status, now, self.ctx.node, detail=detail):
                log.info("run held" if policy == "hold" else "run skipped",
                         extra={**extra, "action": "hold", "reasons": why})
            return None

    def finish(self, run: RunRow, result: RunResult) -> bool:
        """Record ``result`` under the fence ``run`` was executed with; False when refused."""
        if result.status == "interrupted":
            return True
        return self.finish_all([(run, result)])[0]

    def finish_all(self, outcomes: Sequence[tuple[RunRow, RunResult]]) -> list[bool]:
        """Record each outcome under the fence its run was executed with, in one transaction.

        An outcome is refused (False) when another node adopted its run meanwhile (this node
        was stopped or cut off past its lease): the adopter's outcome stands, and this late
        write is logged.
        """
        answers: list[bool] = []
        refused: list[tuple[RunRow, RunResult, RunRow | None]] = []
        with self.ctx.begin() as conn:
            now = self.ctx.clock.now()
            for run, result in outcomes:
                ok = result.status == "interrupted" or run_store.set_status(
                    conn, run.id, result.status, now, detail=result.detail,
                    stats=result.stats or None, fence=run.fence)
                if not ok:
                    refused.append((run, result, run_store.get(conn, run.id)))
                answers.append(ok)
        for run, result, current in refused:
            log.warning("late run-status write refused: the run was taken over (now node %s, "
                        "lease %s; this node held lease %s)",
                        current.node if current else None,
                        current.lease_gen if current else None, run.lease_gen,
                        extra={"job": run.campaign, "run_id": run.id, "action": "fenced",
                               "status": result.status})
        return answers
