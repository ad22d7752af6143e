"""Waking becomes claiming: due occurrences are inserted as run rows in one transaction.

Run rows are unique on (schedule, occurrence) and on local slot; whoever's insert wins owns the
run, so a catch-up after a restart or a second node is a no-op (docs/ARCHITECTURE.md,
"Invariants" 2). The cursor of each schedule moves in the same transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from scheduler.context import ServiceContext
from scheduler.engine.planning import OccurrenceCache, plan_claims
from scheduler.kinds import ScheduleSpec
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.runs import Claim, RunRow

log = logging.getLogger("martech.engine")

# A big batch (a 10k-schedule catch-up) is claimed in transactions of this many schedules;
# each chunk's runs start as soon as it commits. Not smaller: measured with 1,000 jobs due at
# once on SQLite, chunks of 250 got the first runs going ~25 ms after the due time but pushed
# the last commit from ~80 ms to ~190 ms, the spawned runs' own transactions competing with
# the remaining claims for the write lock and the GIL (bench/README.md).
CLAIM_CHUNK = 1000
CLAIM_RETRY_S = 1.0


@dataclass(frozen=True)
class ClaimedRun:
    run_id: int
    spec: ScheduleSpec
    scheduled_at: datetime
    # The row once ``start_unpaused`` moved it to running: the executor then calls the job
    # kind without another transaction of its own.
    started: RunRow | None = None
    claim: Claim | None = None

    def as_started(self, node: str, now: datetime) -> RunRow:
        """The run row as ``run_store.start`` left it (built here: no read back)."""
        assert self.claim is not None
        c = self.claim
        return RunRow(self.run_id, c.schedule_key, c.campaign, c.kind, c.scheduled_at,
                      c.local_slot, c.trigger, "running", node, now, now, None, c.detail, None)


# Called with each chunk of runs won, once its claim committed, and the time: the hook the
# benchmark measures "due -> claim committed" through. It must keep nothing, return at once.
Claimed = Callable[[list[ClaimedRun], datetime], None]


class ClaimLoop:
    """Collects woken schedule keys and claims them, starting each won run via ``spawn``."""

    def __init__(self, ctx: ServiceContext, specs: Callable[[], dict[str, ScheduleSpec]],
                 spawn: Callable[[ClaimedRun], None],
                 on_claimed: Claimed | None = None) -> None:
        self.ctx = ctx
        self.specs = specs
        self.spawn = spawn
        self.on_claimed = on_claimed
        self.due: set[str] = set()
        self.wake = asyncio.Event()
        self.caught_up = asyncio.Event()  # set once a claim pass left nothing due
        # Claims get a thread of their own: never queued behind the runs they just started,
        # which share the default pool for their own database work.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="martech-claim")

    def request(self, keys: Iterable[str]) -> None:
        self.due.update(keys)
        self.wake.set()

    def close(self) -> None:
        self._thread.shutdown(wait=False)

    async def run(self) -> None:
        while not self.ctx.stopping.is_set():
            await self.wake.wait()
            self.wake.clear()
            if self.ctx.stopping.is_set():
                return
            await asyncio.sleep(0)  # let wake-ups due in the same tick join this batch
            keys, self.due = self.due, set()
            specs = self.specs()
            await self._claim_chunks([specs[k] for k in keys if k in specs])
            if not self.due:
                self.caught_up.set()

    async def _claim_chunks(self, specs: list[ScheduleSpec]) -> None:
        """Claim in chunks, starting each chunk's runs as soon as it commits."""
        loop = asyncio.get_running_loop()
        for start in range(0, len(specs), CLAIM_CHUNK):
            if self.ctx.stopping.is_set():
                return  # cursors of the rest did not move: the next start catches them up
            chunk = specs[start:start + CLAIM_CHUNK]
            try:
                claimed = await loop.run_in_executor(self._thread, self.claim_due, chunk)
            except Exception:
                # The loop survives its dependencies: a database outage is logged and retried.
                log.exception("claiming due runs failed; retrying", extra={"action": "claim"})
                self.due.update(s.key for s in specs[start:])
                await asyncio.sleep(CLAIM_RETRY_S)
                self.wake.set()
                return
            if self.on_claimed is not None and claimed:
                self.on_claimed(claimed, self.ctx.clock.now())
            try:
                claimed = await loop.run_in_executor(self._thread, self.start_unpaused, claimed)
            except Exception:  # not started here: each run's executor starts it itself
                log.exception("starting claimed runs failed", extra={"action": "claim"})
            for run in claimed:
                self.spawn(run)

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
        return self._owned(claims, won, {s.key: s for s in specs})

    def start_unpaused(self, claimed: list[ClaimedRun]) -> list[ClaimedRun]:
        """Start every claimed run whose campaign has no pause reason, in one transaction.

        A thousand runs due at once would otherwise each need a transaction of their own (on
        SQLite serialised behind one write lock) before their job kind gets going. A crash
        between the claim and this commit leaves the runs pending and never started, so the
        grace rules of recovery still apply to them.
        """
        if not claimed:
            return claimed
        now = self.ctx.clock.now()
        with self.ctx.begin() as conn:
            paused = pauses.paused_among(conn, [c.spec.campaign for c in claimed])
            ids = [c.run_id for c in claimed if c.spec.campaign not in paused]
            started = run_store.start(conn, ids, self.ctx.node, now)
        return [dataclasses.replace(c, started=c.as_started(self.ctx.node, now))
                if c.run_id in started else c for c in claimed]

    @staticmethod
    def _owned(claims: list[Claim], won: dict[tuple[str, datetime], int],
               by_key: dict[str, ScheduleSpec]) -> list[ClaimedRun]:
        out = []
        for claim in claims:
            run_id = won.get((claim.schedule_key, claim.scheduled_at))
            if run_id is None:
                continue
            if claim.status == "pending":
                out.append(ClaimedRun(run_id, by_key[claim.schedule_key], claim.scheduled_at,
                                      claim=claim))
            elif claim.status == "missed":
                log.warning("run missed", extra={"action": "missed", "job": claim.campaign,
                                                 "run_id": run_id, "detail": claim.detail})
        return out
