"""The scheduling engine: APScheduler wakes the process, the database decides.

Every wake-up becomes a claim: occurrences between a schedule's cursor and now are inserted as
run rows (unique on occurrence and on local slot) and the cursor moves on, in one transaction.
Whoever's insert wins executes the run. Missed occurrences within ``misfire_grace`` run once
(the latest; the others are recorded as ``coalesced``); older ones are recorded as ``missed``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.exc import DBAPIError

from scheduler.clock import utc
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.gcpause import gc_paused
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.schedules import Occurrence, Schedule
from scheduler.store import heartbeats, pauses
from scheduler.store import runs as run_store
from scheduler.store.runs import Claim, RunRow
from scheduler.store.tables import runs as run_table
from scheduler.triggers import ScheduleTrigger

log = logging.getLogger("martech.engine")

HELD_POLL_S = 2.0
RELEASED = "released after hold"  # detail prefix of a held run moved back to pending
ON_TIME_TOLERANCE = timedelta(seconds=60)
# A big batch (a 10k-schedule catch-up) is claimed in transactions of this many schedules;
# each chunk's runs start as soon as it commits. Not smaller: measured with 1,000 jobs due at
# once on SQLite, chunks of 250 got the first runs going ~25 ms after the due time but pushed
# the last commit from ~80 ms to ~190 ms, the spawned runs' own transactions competing with
# the remaining claims for the write lock and the GIL (bench/README.md).
CLAIM_CHUNK = 1000
# A job raising one of these met a dependency outage (database, network), not a bug of its
# own: the run stays "running" and is retried after a backoff (jobs are resumable). Not all
# of OSError: a missing file or a permission error is a mistake to report, not to wait out.
OUTAGES: tuple[type[BaseException], ...] = (DBAPIError, ConnectionError, TimeoutError,
                                            socket.gaierror)


@dataclass(frozen=True)
class ClaimedRun:
    run_id: int
    spec: ScheduleSpec
    scheduled_at: datetime


OccurrenceCache = dict[tuple[Schedule, datetime], list[Occurrence]]


def plan_claims(spec: ScheduleSpec, cursor: datetime | None, now: datetime,
                cache: OccurrenceCache | None = None) -> tuple[list[Claim], datetime | None]:
    """Pure: which run rows a wake-up at ``now`` should insert for ``spec``, and the new cursor.

    A schedule with no cursor starts now (no backfill from the beginning of time). ``cache``
    shares the occurrence maths between specs with the same schedule and cursor (thousands of
    campaigns on "0 9 * * MON" move together); cron search is pure Python.
    """
    if cursor is None:
        # Count an occurrence that is due exactly now (first wake-up of a new schedule).
        cursor = now - timedelta(seconds=1)
    if cache is None:
        due: list[Occurrence] = list(spec.schedule.between(cursor, now))
    else:
        found = cache.get((spec.schedule, cursor))
        if found is None:
            found = cache[(spec.schedule, cursor)] = list(spec.schedule.between(cursor, now))
        due = found
    if not due:
        return [], None
    grace = effective_grace(spec)
    in_grace = [occ for occ in due if now - occ.at <= grace]
    runnable = in_grace[-1] if in_grace else None
    claims: list[Claim] = []
    for occ in due:
        if occ is runnable:
            status, detail = "pending", None
        elif now - occ.at > grace:
            status, detail = "missed", f"missed by {now - occ.at} (grace {grace})"
        else:
            status, detail = "coalesced", "coalesced into a later occurrence after downtime"
        claims.append(Claim(spec.key, spec.campaign, spec.kind, occ.at, occ.slot, status,
                            detail=detail))
    return claims, due[-1].at


def effective_grace(spec: ScheduleSpec) -> timedelta:
    """How late a run of ``spec`` may still start."""
    # Policy "skip" still runs an on-time wake-up; only "run_once" reaches back to the grace.
    if spec.missed == "run_once":
        return spec.misfire_grace
    return min(spec.misfire_grace, ON_TIME_TOLERANCE)


def next_fire_times(specs: dict[str, ScheduleSpec], now: datetime
                    ) -> dict[str, datetime | None]:
    """Pure: each spec's next fire after ``now`` (None when over); shared schedules once."""
    out: dict[str, datetime | None] = {}
    by_schedule: dict[Schedule, datetime | None] = {}
    for key, spec in specs.items():
        if spec.schedule not in by_schedule:
            try:
                occ = spec.schedule.next_after(now)
            except Exception:  # logged by _sync_jobs; the status table just shows none
                occ = None
            by_schedule[spec.schedule] = occ.at if occ else None
        out[key] = by_schedule[spec.schedule]
    return out


class Engine:
    retry_first_s = 1.0  # backoff after an outage or a bookkeeping error, doubling ...
    retry_max_s = 60.0  # ... to this: an outage may last, the run is never given up

    def __init__(self, ctx: ServiceContext, registry: Registry) -> None:
        self.ctx = ctx
        self.registry = registry
        self.specs: dict[str, ScheduleSpec] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._jobs: dict[str, list[str]] = {}  # APScheduler job id -> schedule keys it wakes
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        # Claims get a thread of their own: never queued behind the runs they just started,
        # which share the default pool for their own database work.
        self._claimer: ThreadPoolExecutor | None = None
        # Runs given up (missed past grace, skipped past max delay) found in worker threads,
        # whose job kind's `on_abandoned` hook the event loop calls (deque: thread-safe).
        self._abandoned: collections.deque[tuple[RunRow, str]] = collections.deque()
        self._unrecorded: dict[int, RunResult] = {}  # outcomes whose recording failed
        self.caught_up = asyncio.Event()  # set once start-up's catch-up claim has committed
        self.claimed_log: list[tuple[str, datetime, datetime]] = []  # (key, due, claimed) bench

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        with gc_paused():  # thousands of specs and schedules: no cycles to look for
            self.specs = self.registry.specs(self.ctx.config)
            self._scheduler = AsyncIOScheduler(timezone="UTC")
            self._sync_jobs()
        self._claimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="martech-claim")
        # Interrupted runs are listed before the claim loop starts, so a run claimed (and
        # perhaps finished) by this start-up's own catch-up is never mistaken for one.
        interrupted = await self.ctx.in_thread(self._interrupted_runs)
        self._scheduler.start()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="claim-loop"),
            asyncio.create_task(self._held_loop(), name="held-loop"),
        ]
        # Catch up everything missed while we were down, then resume interrupted runs.
        self._due.update(self.specs)
        self._wake.set()
        for run_id in interrupted:
            self._spawn(run_id, None)
        await self._drain_abandoned()

    async def stop(self, timeout_s: float) -> None:
        """Stop taking new work; give in-flight runs ``timeout_s`` to checkpoint."""
        self.ctx.stopping.set()
        self._wake.set()  # the claim loop sees `stopping` and returns
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        # Let the loops return on their own: cancelling one while its database work runs in a
        # worker thread would leave that thread holding a connection past engine disposal.
        if self._loops:
            _done, stuck = await asyncio.wait(self._loops, timeout=min(timeout_s, 5.0))
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
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._claimer is not None:
            self._claimer.shutdown(wait=False)

    def reload(self, config: LoadedConfig | None = None) -> None:
        """Swap schedules to match ``config`` (default ``ctx.config``); cursors are untouched.

        The specs are built before anything changes: if a job kind raises, the old config
        and schedules stay in place.
        """
        specs = self.registry.specs(config or self.ctx.config)
        if config is not None:
            self.ctx.config = config
        self.specs = specs
        self._sync_jobs()
        # Catch-up is cursor-based, so re-adding jobs never drops an occurrence (#696).
        self._due.update(self.specs)
        self._wake.set()

    def _sync_jobs(self) -> None:
        """One APScheduler job per distinct schedule, waking every key that shares it.

        Thousands of campaigns share a handful of schedules ("0 9 * * MON"); one wake-up job
        each keeps start-up fast (APScheduler inspects every callable it is given).
        """
        assert self._scheduler is not None
        groups: dict[Schedule, list[str]] = {}
        for key in sorted(self.specs):
            groups.setdefault(self.specs[key].schedule, []).append(key)
        new_jobs = {f"wake:{schedule!r}": (schedule, keys) for schedule, keys in groups.items()}
        for job_id in set(self._jobs) - set(new_jobs):
            self._remove_job(job_id)
        synced: dict[str, list[str]] = {}
        for job_id, (schedule, keys) in new_jobs.items():
            if self._jobs.get(job_id) == keys:
                synced[job_id] = keys
                continue
            try:
                trigger = ScheduleTrigger(schedule)
                # APScheduler evaluates a trigger only later (at start, outside our control):
                # evaluate it once here, where an error can be contained.
                trigger.get_next_fire_time(None, self.ctx.clock.now())
                self._scheduler.add_job(
                    self._on_wake, trigger, args=[keys], id=job_id,
                    name=job_id, misfire_grace_time=None, coalesce=True, max_instances=1000,
                    replace_existing=True,
                )
            except Exception:
                # One bad schedule (a cron that never fires slipped past validation) must
                # not keep the others from waking: log it, leave it out.
                self._remove_job(job_id)
                for key in keys:
                    log.exception("schedule cannot be woken; skipped", extra={
                        "action": "schedule_error", "job": self.specs[key].campaign})
                continue
            synced[job_id] = keys
        self._jobs = synced

    def _remove_job(self, job_id: str) -> None:
        assert self._scheduler is not None
        # APScheduler drops a job by itself once its trigger is exhausted (one-offs).
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(job_id)

    def next_fire_times(self) -> dict[str, datetime | None]:
        return next_fire_times(self.specs, self.ctx.clock.now())

    # -- waking and claiming ---------------------------------------------------------------

    async def _on_wake(self, keys: list[str]) -> None:
        self._due.update(keys)
        self._wake.set()

    async def _claim_loop(self) -> None:
        while not self.ctx.stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self.ctx.stopping.is_set():
                return
            await asyncio.sleep(0)  # let wake-ups due in the same tick join this batch
            keys, self._due = self._due, set()
            specs = [self.specs[k] for k in keys if k in self.specs]
            await self._claim_chunks(specs)
            if not self._due:
                self.caught_up.set()

    async def _claim_chunks(self, specs: list[ScheduleSpec]) -> None:
        """Claim in chunks, starting each chunk's runs as soon as it commits."""
        loop = asyncio.get_running_loop()
        for start in range(0, len(specs), CLAIM_CHUNK):
            if self.ctx.stopping.is_set():
                return  # cursors of the rest did not move: the next start catches them up
            chunk = specs[start:start + CLAIM_CHUNK]
            try:
                claimed = await loop.run_in_executor(self._claimer, self.claim_due, chunk)
            except Exception:
                # The loop survives its dependencies: a database outage is logged and retried.
                log.exception("claiming due runs failed; retrying", extra={"action": "claim"})
                self._due.update(s.key for s in specs[start:])
                await asyncio.sleep(1.0)
                self._wake.set()
                return
            for run in claimed:
                self._spawn(run.run_id, run.spec)

    def claim_due(self, specs: Iterable[ScheduleSpec]) -> list[ClaimedRun]:
        """One transaction: insert due run rows, advance cursors. Returns runs we now own."""
        specs = list(specs)
        now = self.ctx.clock.now()
        claims: list[Claim] = []
        moves: dict[str, tuple[str, datetime]] = {}
        cache: OccurrenceCache = {}
        with self.ctx.begin() as conn:
            cursors = run_store.cursors(conn, [s.key for s in specs])
            for spec in specs:
                cursor = cursors.get(spec.key)
                try:
                    spec_claims, new_cursor = plan_claims(spec, cursor, now, cache)
                except Exception:
                    # A per-spec error must not cost every other schedule its runs; this
                    # one's cursor stays put, so nothing is lost once it is fixed.
                    log.exception("planning runs failed; schedule skipped", extra={
                        "action": "claim_error", "job": spec.campaign})
                    continue
                claims += spec_claims
                if new_cursor is not None:
                    moves[spec.key] = (spec.campaign, new_cursor)
                elif spec.key not in cursors:
                    moves[spec.key] = (spec.campaign, now)
            won = run_store.claim(conn, claims, self.ctx.node, now)
            run_store.advance_cursors(conn, moves, now)
        committed = self.ctx.clock.now()  # lateness counts until the claim is durable
        by_key = {s.key: s for s in specs}
        out = []
        for claim in claims:
            run_id = won.get((claim.schedule_key, claim.scheduled_at))
            if run_id is None:
                continue
            if claim.status == "pending":
                out.append(ClaimedRun(run_id, by_key[claim.schedule_key], claim.scheduled_at))
                self.claimed_log.append((claim.schedule_key, claim.scheduled_at, committed))
            elif claim.status == "missed":
                log.warning("run missed", extra={"action": "missed", "job": claim.campaign,
                                                 "run_id": run_id, "detail": claim.detail})
        return out

    # -- executing -------------------------------------------------------------------------

    def _spawn(self, run_id: int, spec: ScheduleSpec | None) -> None:
        if run_id in self._tasks and not self._tasks[run_id].done():
            return
        task = asyncio.create_task(self._execute_quietly(run_id), name=f"run-{run_id}")
        self._tasks[run_id] = task

        def _forget(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(run_id, None)

        task.add_done_callback(_forget)

    async def _execute_quietly(self, run_id: int) -> None:
        """The spawned task; ``execute`` retries every error itself, so none goes unretrieved."""
        await self.execute(run_id)

    async def execute(self, run_id: int) -> RunResult | None:
        """Run one owned run: honour pauses, call the job kind, record the outcome.

        A dependency outage inside the job (``OUTAGES``) is not the job's failure: the run
        stays "running" and is executed again after a backoff (jobs resume where they
        stopped). An error in the engine's own bookkeeping is retried the same way. Returns
        None when nothing was executed (held, finished, owned elsewhere, service stopping).
        """
        extra: dict[str, Any] = {"job": None, "run_id": run_id}
        delay_s = self.retry_first_s
        while True:
            try:
                return await self._attempt(run_id, extra)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outage = isinstance(exc, OUTAGES)
                log.warning("run attempt failed (%s); the run stays active, retry in %.1fs",
                            "dependency outage" if outage else "engine error", delay_s,
                            exc_info=True, extra={**extra, "action": "run_retry"})
            if not await self._backoff(delay_s):
                log.info("stopping: run left to resume on the next start",
                         extra={**extra, "action": "interrupt"})
                return None
            delay_s = min(delay_s * 2, self.retry_max_s)

    async def _attempt(self, run_id: int, extra: dict[str, Any]) -> RunResult | None:
        unrecorded = self._unrecorded.get(run_id)
        if unrecorded is not None:  # the job finished; only recording its outcome failed
            await self._record(run_id, unrecorded, extra)
            return unrecorded
        run = await self.ctx.in_thread(self._load_run, run_id)
        if run is None:
            return None
        extra["job"] = run.campaign
        campaign = self.ctx.config.campaigns.get(run.campaign)
        job = self.registry.kinds.get(run.kind)
        if campaign is None or job is None:
            await self.ctx.in_thread(self._finish, run.id, RunResult(
                "skipped", "campaign no longer in the configuration"))
            log.warning("run skipped: campaign removed", extra={**extra, "action": "skip"})
            return None
        spec = self.specs.get(run.schedule_key)
        held = await self.ctx.in_thread(self._hold_if_paused, run, spec)
        if held:
            return None
        log.info("run started", extra={**extra, "action": "run_start", "kind": run.kind})
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
        await self._record(run.id, result, extra)
        return result

    async def _record(self, run_id: int, result: RunResult, extra: dict[str, Any]) -> None:
        # Kept until recorded, so a retry records the outcome instead of re-running the job.
        self._unrecorded[run_id] = result
        await self.ctx.in_thread(self._finish, run_id, result)
        del self._unrecorded[run_id]
        log.info("run %s", result.status, extra={**extra, "action": "run_end",
                                                  "status": result.status, **result.stats})

    async def _backoff(self, delay_s: float) -> bool:
        """Wait ``delay_s`` unless the service stops first; True to carry on."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ctx.stopping.wait(), delay_s)
        return not self.ctx.stopping.is_set()

    def _load_run(self, run_id: int) -> RunRow | None:
        with self.ctx.begin() as conn:
            return run_store.get(conn, run_id)

    def _move(self, conn: sa.Connection, run: RunRow, status: str, now: datetime, *,
              detail: str | None = None) -> bool:
        """Move ``run`` from the status (and owner) it was read with; this node now owns it.

        Conditional, so of two nodes (or tasks) acting on the same read only one wins:
        RETURNING tells, whatever rowcount the driver reports.
        """
        values: dict[str, Any] = {"status": status, "node": self.ctx.node}
        if status == "running":
            values["started_at"] = now
        if status in run_store.FINISHED:
            values["finished_at"] = now
        if detail is not None:
            values["detail"] = detail
        owner = (run_table.c.node.is_(None) if run.node is None
                 else run_table.c.node == run.node)
        stmt = (sa.update(run_table)
                .where(run_table.c.id == run.id, run_table.c.status == run.status, owner)
                .values(**values).returning(run_table.c.id))
        return conn.execute(stmt).first() is not None

    def _hold_if_paused(self, run: RunRow, spec: ScheduleSpec | None) -> bool:
        """A run due while its campaign is paused is held, or skipped per policy.

        True when the run must not execute now: held, skipped, finished meanwhile, owned by
        another node, or moved by someone else between our read and our update.
        """
        now = self.ctx.clock.now()
        extra = {"job": run.campaign, "run_id": run.id}
        with self.ctx.begin() as conn:
            current = run_store.get(conn, run.id)
            if current is None or current.status not in run_store.ACTIVE:
                return True  # finished meanwhile (e.g. resumed and done twice): never re-run
            if current.node not in (None, self.ctx.node):
                log.info("run owned by node %s; not executed here", current.node,
                         extra={**extra, "action": "not_owner"})
                return True
            reasons = pauses.reasons(conn, run.campaign)
            if not reasons:
                return not self._move(conn, current, "running", now)
            why = ", ".join(p.reason for p in reasons)
            policy = spec.on_pause if spec else "hold"
            if current.status == "held":
                return True
            if policy == "skip":
                moved = self._move(conn, current, "skipped", now, detail=f"paused: {why}")
            else:
                moved = self._move(conn, current, "held", now, detail=f"held: paused ({why})")
            if moved:
                log.info("run held" if policy == "hold" else "run skipped",
                         extra={**extra, "action": "hold", "reasons": why})
            return True

    def _finish(self, run_id: int, result: RunResult) -> None:
        now = self.ctx.clock.now()
        status = result.status
        if status == "interrupted":
            return  # stays running; resumed on the next start
        with self.ctx.begin() as conn:
            run_store.set_status(conn, run_id, status, now, detail=result.detail,
                                 stats=result.stats or None)

    async def _held_loop(self) -> None:
        """Release held runs whose campaign is no longer paused; skip those past max delay."""
        while not self.ctx.stopping.is_set():
            try:
                ready = await self.ctx.in_thread(self._release_held_sync)
                for run_id in ready:
                    self._spawn(run_id, None)
                await self._drain_abandoned()
                await self.ctx.in_thread(self._heartbeat_sync)
            except Exception:
                log.exception("held-run check failed", extra={"action": "held"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stopping.wait(), HELD_POLL_S)

    def _release_held_sync(self) -> list[int]:
        """Move unpaused held runs to pending (returned: ours to spawn) or skip them.

        Each move is conditional on the run still being held, so when two nodes release at
        once only one of them gets (and executes) the run.
        """
        now = self.ctx.clock.now()
        ready: list[int] = []
        skipped: list[tuple[RunRow, str]] = []
        with self.ctx.begin() as conn:
            for run in run_store.by_status(conn, ["held"]):
                if pauses.is_paused(conn, run.campaign):
                    continue
                spec = self.specs.get(run.schedule_key)
                max_delay = spec.max_delay if spec else timedelta(days=1)
                if run.trigger == "schedule" and now - utc(run.scheduled_at) > max_delay:
                    detail = f"skipped: held past max delay {max_delay}"
                    if self._move(conn, run, "skipped", now, detail=detail):
                        skipped.append((dataclasses.replace(run, status="skipped",
                                                            detail=detail), detail))
                        log.info("held run skipped", extra={
                            "action": "skip", "job": run.campaign, "run_id": run.id})
                    continue
                if self._move(conn, run, "pending", now,
                              detail=f"{RELEASED} ({run.detail or ''})"):
                    ready.append(run.id)
        self._abandoned.extend(skipped)  # committed: now the kinds may close their books
        return ready

    def _interrupted_runs(self) -> list[int]:
        """Runs left pending/running by a crash of this node (or of a node now dead).

        Those too late to resume are given up instead: never started and past the grace →
        missed; started and past max delay → skipped (their kinds are told, see
        ``_drain_abandoned``).
        """
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
            extra = {"job": run.campaign, "run_id": run.id}
            late = self._too_late(run, now)
            if late is not None:
                status, detail = late
                with self.ctx.begin() as conn:
                    moved = self._move(conn, run, status, now, detail=detail)
                if moved:
                    self._abandoned.append(
                        (dataclasses.replace(run, status=status, detail=detail), detail))
                    log.warning("interrupted run given up: %s", detail,
                                extra={**extra, "action": status})
                continue
            log.info("resuming interrupted run", extra={**extra, "action": "resume"})
            out.append(run.id)
        return out

    def _too_late(self, run: RunRow, now: datetime) -> tuple[str, str] | None:
        """``(status, detail)`` when an interrupted run is too late to resume, else None."""
        spec = self.specs.get(run.schedule_key)
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

    async def _drain_abandoned(self) -> None:
        """Let each given-up run's job kind close its own books (its optional hook)."""
        retry: list[tuple[RunRow, str]] = []
        while self._abandoned:
            run, reason = self._abandoned.popleft()
            job = self.registry.kinds.get(run.kind)
            hook = getattr(job, "on_abandoned", None)
            campaign = self.ctx.config.campaigns.get(run.campaign)
            if hook is None or campaign is None:
                continue
            try:
                await hook(self.ctx, campaign, run, reason)
            except OUTAGES:
                log.warning("on_abandoned hook met an outage; retried later", exc_info=True,
                            extra={"action": "abandon", "job": run.campaign, "run_id": run.id})
                retry.append((run, reason))
            except Exception:
                log.exception("on_abandoned hook failed", extra={
                    "action": "abandon", "job": run.campaign, "run_id": run.id})
        self._abandoned.extend(retry)  # the held loop drains again every HELD_POLL_S

    def _take_over(self, run: RunRow) -> bool:
        """Adopt a dead node's run; the conditional update lets only one survivor win."""
        stmt = (sa.update(run_table)
                .where(run_table.c.id == run.id, run_table.c.node == run.node)
                .values(node=self.ctx.node))
        with self.ctx.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def _node_dead(self, node: str) -> bool:
        limit = timedelta(seconds=self.ctx.settings.heartbeat_interval_s * 4)
        with self.ctx.begin() as conn:
            for row in heartbeats.latest(conn):
                if row.node == node and self.ctx.clock.now() - utc(row.at) < limit:
                    return False
        return True

    def _heartbeat_sync(self) -> None:
        with self.ctx.begin() as conn:
            heartbeats.beat(conn, self.ctx.node, "service", self.ctx.clock.now(),
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
            await self.execute(run_id)
        return run_id
