"""One claimed batch on its way out: the group commit that keeps the ledger exact under crashes
(ARCHITECTURE.md, invariant 3; issue 9, point 1).

A message's row is marked ``on_wire`` in the database *before* its content may be written, and
its outcome is recorded *after* its reply. Both go in group commits: one transaction takes every
mark requested and every outcome reported since the last one, so the cost is one commit per
handful of messages, not per message, and nothing waits on the database but the next commit.

The window bounds the doubt. At most ``window`` rows (2 x connections) are marked and not yet
recorded at any moment: a row is only granted its mark when that keeps the count within the
window, counting the outcomes the same commit records. A ``kill -9`` therefore leaves at most
``window`` rows in doubt (``unknown`` under at_most_once, re-sent with the same Message-ID under
at_least_once); every other claimed row goes back to ``pending`` when the claim is adopted.

Every commit is fenced: the hot path (sent rows and new marks, one statement) is conditional
row by row on the claim's token, a commit with failures first locks the claim row
(``claims.hold``). Once another node adopted the claim, the commit is rolled back: marks are
refused (those messages never go out), outcomes are refused and logged, and the sender stops
the batch. A renewal task keeps the lease alive while the batch is worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import sqlalchemy as sa

from jobs.newsletter import claims, ledger
from scheduler.context import ServiceContext
from scheduler.delivery.base import SendOutcome
from scheduler.store.dbclock import db_now

log = logging.getLogger("martech.newsletter")

# Outcomes are only in memory until committed: a transient database error (a lock, a dropped
# connection, a fail-over) is retried after these pauses before the batch is given up (the run
# raises; the engine re-spawns it and the claim is adopted by policy).
RECORD_RETRY_DELAYS_S: tuple[float, ...] = (0.1, 0.5, 2.0)
TRANSIENT_DB_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)

Row = ledger.DeliveryRow


class _Fenced(Exception):
    """Raised inside a commit's transaction to roll it back: the claim is not ours."""


class WireBook:
    """Marks and outcomes of one claim, group-committed by a task of its own."""

    def __init__(self, ctx: ServiceContext, claim: claims.Claim, *, campaign: str,
                 policy: ledger.Policy, window: int) -> None:
        self.ctx = ctx
        self.claim = claim
        self.campaign = campaign
        self.policy = policy
        self.window = max(1, window)
        self.tally = ledger.BatchTally()
        self.fenced = False
        self.failed: BaseException | None = None  # the error that stopped the committer
        self.refused = 0  # outcomes reported after the claim was lost
        self.extra: dict[str, Any] = {"job": campaign, "run_id": claim.run_id,
                                      "claim": claim.token}
        self._wanted: dict[int, tuple[Row, asyncio.Future[bool]]] = {}
        self._marked: set[int] = set()
        self._outcomes: list[tuple[Row, SendOutcome]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._committer: asyncio.Task[None] | None = None
        self._conn: sa.Connection | None = None
        self._conn_lock = threading.Lock()
        self._renewer: asyncio.Task[None] | None = None

    def start(self) -> WireBook:
        self._committer = asyncio.create_task(self._commit_loop(), name="wire-commit")
        self._renewer = asyncio.create_task(self._renew_loop(), name="wire-renew")
        return self

    # -- what the transport calls --------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """Nothing more may cross: the claim was lost, or its commits cannot be made."""
        return self.fenced or self.failed is not None

    def want(self, row: Row) -> None:
        """``row`` is about to be sent: ask for its mark in the next commit."""
        if self.stopped or row.id in self._marked or row.id in self._wanted:
            return
        self._wanted[row.id] = (row, asyncio.get_running_loop().create_future())
        self._wake.set()

    async def cross(self, row: Row) -> bool:
        """Wait until ``row`` is marked ``on_wire``; False: never send it (lease lost, or the
        database cannot record it)."""
        if self.stopped:
            return False
        if row.id in self._marked:
            return True
        self.want(row)
        entry = self._wanted.get(row.id)
        return False if entry is None else await entry[1]

    def done(self, row: Row, outcome: SendOutcome) -> None:
        """``row``'s outcome, for the next commit."""
        if self.fenced:
            self.refused += 1
            return
        entry = self._wanted.pop(row.id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(False)  # reported before it crossed: nobody waits for it
        self._outcomes.append((row, outcome))
        self._wake.set()

    async def close(self) -> ledger.BatchTally:
        """Commit what is left and end the lease; raises the database error that stopped
        the committer, if one did (the claim is then abandoned to adoption)."""
        self._closing = True
        self._wake.set()
        try:
            if self._committer is not None:
                await self._committer
        finally:
            await self._stop_renewing()
            await self.ctx.in_thread(self._disconnect)
        if self.fenced:
            log.warning("delivery claim %d ended fenced: %d late outcome(s) refused in all",
                        self.claim.token, self.refused,
                        extra={**self.extra, "action": "fenced_total", "refused": self.refused})
        return self.tally

    async def abort(self) -> None:
        """The batch is being torn down (shutdown, error): leave the claim to adoption."""
        claims.abandon(self.claim.token)
        for task in (self._committer, self._renewer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.ctx.in_thread(self._disconnect)

    # -- the committer ---------------------------------------------------------------------

    def _grant(self, recorded: list[tuple[Row, SendOutcome]]) -> list[Row]:
        freed = sum(1 for row, _out in recorded if row.id in self._marked)
        budget = self.window - (len(self._marked) - freed)
        grant: list[Row] = []
        for row_id in list(self._wanted)[:max(0, budget)]:
            grant.append(self._wanted[row_id][0])
        return grant

    async def _commit_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                outcomes, self._outcomes = self._outcomes, []
                if self.fenced:  # found lost by the renewer: nothing more is ours to write
                    self.refused += len(outcomes)
                    return
                grant = self._grant(outcomes)
                final = self._closing and len(grant) == len(self._wanted)
                if not outcomes and not grant and not final:
                    continue
                committed = await self._commit(outcomes, grant, final)
                if committed is None:
                    self._fence("the claim was adopted by another node", len(outcomes))
                    return
                self.tally.add(committed)
                for row, _out in outcomes:
                    self._marked.discard(row.id)
                for row in grant:
                    self._marked.add(row.id)
                    entry = self._wanted.pop(row.id, None)
                    if entry is not None and not entry[1].done():
                        entry[1].set_result(True)
                if final:
                    return
        except BaseException as exc:
            self.failed = exc
            self._refuse_all()
            raise

    async def _commit(self, outcomes: list[tuple[Row, SendOutcome]], marks: list[Row],
                      final: bool) -> ledger.BatchTally | None:
        for attempt, delay_s in enumerate((*RECORD_RETRY_DELAYS_S, None), start=1):
            try:
                return await self.ctx.in_thread(self._commit_once, outcomes, marks, final)
            except TRANSIENT_DB_ERRORS as exc:
                if delay_s is None:
                    log.error("cannot record a batch after %d attempts; its claim is left to "
                              "adoption (in-doubt rows resolved by policy)", attempt,
                              extra={**self.extra, "action": "record_failed",
                                     "count": len(outcomes)})
                    raise
                log.warning("recording a batch failed (%s); retrying in %.1fs",
                            type(exc).__name__, delay_s,
                            extra={**self.extra, "action": "record_retry", "attempt": attempt})
                await asyncio.sleep(delay_s)  # not ctx.stopping: a stop must not drop outcomes
        raise AssertionError("unreachable")

    def _commit_once(self, outcomes: list[tuple[Row, SendOutcome]], marks: list[Row],
                     final: bool) -> ledger.BatchTally | None:
        with self._conn_lock:
            return self._commit_locked(outcomes, marks, final)

    def _commit_locked(self, outcomes: list[tuple[Row, SendOutcome]], marks: list[Row],
                       final: bool) -> ledger.BatchTally | None:
        token = self.claim.token
        conn = self._connection()
        try:
            with conn.begin():
                if all(out.ok for _row, out in outcomes):
                    tally = self._settle(conn, outcomes, marks)
                else:
                    tally = self._record(conn, outcomes, marks)
                if final:
                    claims.finish(conn, token)
        except _Fenced:
            return None  # rolled back: nothing of this commit was written
        except TRANSIENT_DB_ERRORS:
            self._drop_connection()  # the retry gets a fresh connection
            raise
        finally:
            if final:
                self._drop_connection()
        return tally

    def _connection(self) -> sa.Connection:
        """One connection for the batch's commits (in the commit thread, used by one commit at
        a time): no pool checkout, and no ping on PostgreSQL, per group commit."""
        if self._conn is None:
            self._conn = self.ctx.db.connect()
        return self._conn

    def _disconnect(self) -> None:
        """Close the batch's connection once no commit uses it (a cancelled committer's
        thread may still be in one: the lock waits for it)."""
        with self._conn_lock:
            self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.close()

    def _settle(self, conn: sa.Connection, outcomes: list[tuple[Row, SendOutcome]],
                marks: list[Row]) -> ledger.BatchTally:
        """The hot path: only sent rows and new marks, one statement fenced row by row."""
        sent = [row.id for row, _out in outcomes]
        wanted = len({*sent, *(row.id for row in marks)})
        matched = ledger.settle(conn, self.claim.token, sent=sent,
                                marks=[row.id for row in marks], now=self.ctx.clock.now())
        if matched != wanted:
            raise _Fenced
        return ledger.BatchTally(sent=len(sent))

    def _record(self, conn: sa.Connection, outcomes: list[tuple[Row, SendOutcome]],
                marks: list[Row]) -> ledger.BatchTally:
        """Failures, retries, bounces: the claim row is locked first, then row by row."""
        token = self.claim.token
        if not claims.hold(conn, token):
            raise _Fenced
        tally = ledger.record(conn, campaign=self.campaign, run_id=self.claim.run_id,
                              token=token, results=outcomes, now=self.ctx.clock.now(),
                              policy=self.policy)
        ledger.mark_on_wire(conn, token, [row.id for row in marks])
        return tally

    # -- the lease -------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        interval_s = self.claim.terms.lease_s / claims.RENEWALS_PER_LEASE
        while not self.fenced:
            await asyncio.sleep(interval_s)
            try:
                held = await self.ctx.in_thread(self._renew_once)
            except sa.exc.SQLAlchemyError:
                log.warning("renewing a delivery lease failed; retried in %.1fs", interval_s,
                            extra={**self.extra, "action": "lease_renew_failed"})
                continue
            if not held:
                self._fence("its lease was found adopted at renewal", 0)
                return

    def _renew_once(self) -> bool:
        with self.ctx.begin() as conn:
            return claims.renew(conn, self.claim.token, db_now(conn), self.claim.terms.lease_s)

    async def _stop_renewing(self) -> None:
        if self._renewer is not None and not self._renewer.done():
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    # -- fencing ---------------------------------------------------------------------------

    def _fence(self, why: str, outcomes: int) -> None:
        if self.fenced:
            return
        self.fenced = True
        self.refused += outcomes
        unsent = len(self._wanted)
        self._refuse_all()
        self._wake.set()
        log.warning("delivery claim %d lost (%s): late writes refused — %d outcome(s) "
                    "dropped, %d message(s) not sent", self.claim.token, why, self.refused,
                    unsent,
                    extra={**self.extra, "action": "fenced", "refused": self.refused,
                           "unsent": unsent})

    def _refuse_all(self) -> None:
        for _row, future in self._wanted.values():
            if not future.done():
                future.set_result(False)
        self._wanted.clear()
