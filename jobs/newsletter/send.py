"""The send loop of one newsletter run: materialise, then claim → send → record, per batch.

ARCHITECTURE.md, invariants 3, 4 and 8: every recipient is a ledger row before anything is sent
(``materialise.py``); a batch is claimed under a lease with a fencing token (``claims.py``),
each message is marked ``on_wire`` before its content goes out and its outcome group-committed
after (``wire.py``); pause state is re-read between batches. Any number of senders work one
run at once — the run's owner (the engine's execution, or ``martech send --now``) and a helper
on every other node (``helper.py``); only the owner materialises and finishes the run. Counts
for reports live in ``runs.stats``, written by the owner from the ledger; bounces and failures
are also ``tracking_events`` rows naming the recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from jobs.newsletter import claims, gates, ledger, links
from jobs.newsletter.materialise import materialise, skip_overdue_now, stored_stats
from jobs.newsletter.prepare import Prepared
from jobs.newsletter.wire import WireBook
from scheduler.context import ServiceContext
from scheduler.delivery.base import OutgoingMessage, SendOutcome, Transport
from scheduler.delivery.ratelimit import RateLimiter
from scheduler.kinds import RunResult
from scheduler.store import pauses
from scheduler.store.dbclock import db_now
from scheduler.store.tables import runs

log = logging.getLogger("martech.newsletter")

POLL_S = 0.5
STATS_EVERY_S = 1.0  # the owner refreshes runs.stats from the ledger at most this often

Job = tuple[int, ledger.DeliveryRow]


@dataclass
class Progress:
    total: int = 0
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    unknown: int = 0
    skipped: int = 0
    retrying: int = 0
    paused: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.bounced + self.unknown


ProgressFn = Callable[[Progress], None]


class Sender:
    """Sends one run. ``on_pause``: ``return`` (service: the run is held and released later by
    the engine) or ``wait`` (the ``martech send`` command: wait for resume in place).
    ``helper``: another node's sender helping the owner — it never materialises, never writes
    the run row, and returns as soon as nothing is left to claim."""

    def __init__(self, ctx: ServiceContext, prepared: Prepared, run_id: int,
                 transport: Transport, *, on_pause: str = "return",
                 progress: ProgressFn | None = None, helper: bool = False) -> None:
        self.ctx = ctx
        self.prepared = prepared
        self.campaign = prepared.campaign
        self.run_id = run_id
        self.transport = transport
        self.on_pause = "return" if helper else on_pause
        self.helper = helper
        self.progress_fn = progress
        self.progress = Progress()
        send = self.campaign.send
        self.limiter = RateLimiter(f"newsletter:{self.campaign.name}",
                                   rate_per_s=send.rate_per_s, rate_per_h=send.rate_per_h)
        self.policy = ledger.Policy(send.delivery, send.max_attempts, send.retry_backoff)
        self.wire_window = 2 * send.connections  # at most this many in doubt per kill
        self.window: deque[bool] = deque(maxlen=self.campaign.error_budget.window)
        self.stats: dict[str, Any] = {}
        self.extra = {"job": self.campaign.name, "run_id": run_id, "helper": helper}
        self.renders = gates.RenderBudget(prepared)
        self._stats_at = 0.0
        # claims made, claims that came back short because another node held the rows left,
        # rows adopted from dead claims, rows suppressed at claim time.
        self.counters: Counter[str] = Counter(claims=0, contended=0, adopted=0, suppressed=0)

    def _refresh(self, *, write: bool) -> None:
        """Progress and stats from the ledger (every sender's work counts), written to the
        run row by the owner."""
        with self.ctx.begin() as conn:
            counts = ledger.counts(conn, self.run_id)
            later = ledger.suppressed_later(conn, self.run_id)
            p = self.progress
            p.total = sum(counts.values())
            p.sent, p.failed = counts.get("sent", 0), counts.get("failed", 0)
            p.bounced, p.unknown = counts.get("bounced", 0), counts.get("unknown", 0)
            p.skipped = counts.get("skipped", 0) + counts.get("suppressed", 0)
            p.retrying = counts.get("pending", 0) + counts.get("sending", 0)
            listed = self.stats.setdefault("suppressed_listed", self.stats.get("suppressed", 0))
            self.stats.update(sent=p.sent, failed=p.failed, bounced=p.bounced,
                              unknown=p.unknown, pending=p.retrying, suppressed_later=later,
                              suppressed=listed + later)
            if write and not self.helper:
                conn.execute(sa.update(runs).where(runs.c.id == self.run_id)
                             .values(stats=self._final_stats()))
        self._stats_at = self.ctx.clock.monotonic()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> RunResult:
        try:
            return await self._run()
        finally:
            log.info("sender finished: %d batches claimed", self.counters["claims"],
                     extra={**self.extra, "action": "sender_done", **self.counters})

    async def _begin(self) -> bool:
        """Materialise (the owner) or find the run materialised (a helper); False: not yet."""
        if self.helper:
            self.stats = await self.ctx.in_thread(stored_stats, self.ctx, self.run_id)
            if not self.stats.get("materialised") or not links.settled(self.prepared,
                                                                       self.stats):
                return False
        else:
            self.stats = await self.ctx.in_thread(self.materialise)
        await self.ctx.in_thread(self._start)
        return True

    def materialise(self) -> dict[str, Any]:
        """The owner's first step: the audience into the ledger (``materialise.py``)."""
        return materialise(self.ctx, self.prepared, self.run_id, self.extra)

    def _start(self) -> None:
        """Before the first claim: rows too late for their zone are skipped (the owner), the
        resume ramp is loaded, progress is read from the ledger."""
        if not self.helper:
            skip_overdue_now(self.ctx, self.campaign, self.run_id)
        gates.load_ramp(self.ctx, self.campaign, self.limiter, self.run_id, self.stats)
        self._refresh(write=False)

    async def _run(self) -> RunResult:
        if not await self._begin():
            return RunResult("done", "the run's owner has not materialised (or checked) it yet")
        links_ready = links.settled(self.prepared, self.stats)
        self._report()
        while True:
            if self.ctx.stopping.is_set():
                return RunResult("interrupted", "stopped; pending rows resume on restart",
                                 self._final_stats())
            why = await self.ctx.in_thread(self._pause_reasons)
            if why:
                self.progress.paused = why
                self._report()
                if self.on_pause == "return":
                    return RunResult("held", f"paused mid-send ({why}); pending rows resume "
                                     "when the pause clears", self._final_stats())
                await self._sleep(POLL_S)
                continue
            if self.progress.paused is not None:  # resumed in place: ramp up gently
                await self.ctx.in_thread(gates.load_ramp, self.ctx, self.campaign,
                                         self.limiter, self.run_id, self.stats)
            self.progress.paused = None
            if not links_ready:  # checked before the first message; a broken one pauses
                links_ready = await links.before_first_message(
                    self.ctx, self.prepared, self.run_id, self.stats)
                continue
            batch_size = self.limiter.max_batch(self.campaign.send.batch_size,
                                                self.ctx.clock.now())
            step = await self.ctx.in_thread(self._claim, batch_size)
            if step.wait_s > 0:  # the campaign's shared rate bucket is empty for now
                await self._sleep(min(step.wait_s, POLL_S))
                continue
            if step.claim is None:
                if step.suppressed or step.adopted:
                    continue
                if self.helper:
                    return RunResult("done", "nothing left to claim", self._final_stats())
                if not await self._wait_for_work():
                    break
                continue
            await self._work(step.claim)
        await self.ctx.in_thread(lambda: self._refresh(write=True))
        return RunResult("done", None, self._final_stats())

    async def _wait_for_work(self) -> bool:
        """Nothing to claim now: False when the run is finished, else wait for a retry or a
        send time falling due, or another sender's batch to be recorded (or adopted)."""
        wait_s = await self.ctx.in_thread(self._left)
        if wait_s is None:
            return False
        if wait_s > POLL_S:  # the next zone's 09:00: sleep on the clock, not poll
            when = self.ctx.clock.now() + timedelta(seconds=wait_s)
            await self.ctx.clock.sleep_until(when, self.ctx.stopping)
        else:
            await self._sleep(max(wait_s, 0.01))
        return True

    async def _work(self, claim: claims.Claim) -> None:
        """Send one claimed batch, then act on what it says about the relay."""
        results, tally = await self._send_batch(claim)
        p = self.progress
        p.sent += tally.sent
        p.failed += tally.failed
        p.bounced += tally.bounced
        p.unknown += tally.unknown
        p.retrying -= tally.done
        unreachable = [out for _row, out in results if out.unreachable]
        if await self.ctx.in_thread(self.renders.pause_if_over, self.ctx):
            return
        if unreachable and len(unreachable) == len(results):
            await self.ctx.in_thread(gates.pause_unreachable, self.ctx, self.campaign.name,
                                     unreachable[0])
            return  # the pause check at the top decides what happens next
        if self._budget_exceeded():
            ratio = self.window.count(True) / len(self.window)
            await self.ctx.in_thread(
                self._pause, pauses.ERROR_BUDGET,
                f"{ratio:.0%} of the last {len(self.window)} sends failed "
                f"(budget {self.campaign.error_budget.max_failure_ratio:.0%})")
            self.window.clear()
        if not self.helper and self.ctx.clock.monotonic() - self._stats_at >= STATS_EVERY_S:
            await self.ctx.in_thread(lambda: self._refresh(write=True))
        self._report()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ctx.stopping.wait(), seconds)

    def _pause_reasons(self) -> str | None:
        with self.ctx.begin() as conn:
            reasons = pauses.reasons(conn, self.campaign.name)
        return ", ".join(p.reason for p in reasons) or None

    def _pause(self, reason: str, detail: str) -> None:
        with self.ctx.begin() as conn:
            pauses.add(conn, self.campaign.name, reason, self.ctx.clock.now(), detail=detail,
                       by="sender")

    def _claim(self, limit: int) -> _Step:
        """Adopt the run's dead claims, then claim a batch — one transaction."""
        with self.ctx.begin() as conn:
            adopted = claims.adopt(conn, self.run_id, self.policy.delivery, node=self.ctx.node,
                                   now=db_now(conn))
            step = claims.claim_batch(conn, self.run_id, limit, node=self.ctx.node,
                                      clock=self.ctx.clock, settings=self.ctx.settings,
                                      connections=self.campaign.send.connections,
                                      limiter=self.limiter)
        if adopted.in_doubt:
            log.warning("%d deliveries were mid-send when their sender died: %s",
                        adopted.in_doubt, "marked unknown"
                        if self.policy.delivery == ledger.AT_MOST_ONCE
                        else "re-sending with the same Message-ID",
                        extra={**self.extra, "action": "recover", "count": adopted.in_doubt})
        self.counters.update(claims=int(step.claim is not None), contended=int(step.contended),
                             adopted=adopted.in_doubt + adopted.released,
                             suppressed=step.suppressed)
        if step.suppressed:
            log.info("%d recipients suppressed since materialisation: not sent",
                     step.suppressed, extra={**self.extra, "action": "suppressed_at_claim",
                                             "count": step.suppressed})
        return _Step(step.claim, step.wait_s, step.suppressed,
                     adopted.claims + adopted.in_doubt + adopted.released)

    def _left(self) -> float | None:
        """None when the run is finished (nothing pending, nothing in flight); else how long
        to wait before looking again (a retry falling due, another sender's batch)."""
        with self.ctx.begin() as conn:
            due_in_s = ledger.next_retry_in_s(conn, self.run_id, self.ctx.clock.now())
            in_flight = ledger.in_flight(conn, self.run_id)
        if due_in_s is None and not in_flight:
            return None
        if due_in_s is None or in_flight:
            return min(POLL_S, due_in_s if due_in_s is not None else POLL_S)
        return due_in_s

    async def _send_batch(self, claim: claims.Claim
                          ) -> tuple[list[tuple[ledger.DeliveryRow, SendOutcome]],
                                     ledger.BatchTally]:
        self.prepared.builder.set_date(self.ctx.clock.now())
        # Rendered in a thread: a render may take its whole budget, and the event loop must
        # keep serving the HTTP app and other campaigns meanwhile.
        composed = await self.ctx.in_thread(self.renders.compose_all, claim.rows)
        book = WireBook(self.ctx, claim, campaign=self.campaign.name, policy=self.policy,
                        window=self.wire_window).start()
        outcomes: list[SendOutcome | None] = [None] * len(claim.rows)

        def jobs() -> Iterator[Job]:
            rows, ahead = claim.rows, self.wire_window
            for job in enumerate(rows):
                if book.stopped:  # the claim is another node's now, or cannot be recorded
                    return
                # Ask for the marks of the next rows before they are pulled, so a mark is
                # usually committed by the time its message reaches DATA (the window still
                # bounds how many are granted).
                for index in range(job[0], min(job[0] + ahead, len(rows))):
                    if isinstance(composed[index], OutgoingMessage):
                        book.want(rows[index])
                yield job

        def build(job: Job) -> OutgoingMessage | SendOutcome:
            return composed[job[0]]

        def done(job: Job, outcome: SendOutcome) -> None:
            outcomes[job[0]] = outcome
            if outcome.attempted and not outcome.unreachable:
                self.window.append(not outcome.ok)
            book.done(job[1], outcome)

        try:
            await self._hand_over(jobs(), build, done, book)
            for job in enumerate(claim.rows):  # never handed out: released untouched
                if outcomes[job[0]] is None and not book.stopped:
                    done(job, SendOutcome(ok=False, error="not attempted", attempted=False))
            tally = await book.close()
        except BaseException:
            await book.abort()
            raise
        return ([(row, out) for row, out in zip(claim.rows, outcomes, strict=True)
                 if out is not None], tally)

    async def _hand_over(self, queue: Iterator[Job],
                         build: Callable[[Job], OutgoingMessage | SendOutcome],
                         done: Callable[[Job, SendOutcome], None], book: WireBook) -> None:
        """Give the batch to the transport: the SMTP pool pulls it over its connections,
        pipelined; any other transport gets ``window`` concurrent senders."""
        send_all = getattr(self.transport, "send_all", None)
        if send_all is not None:
            await send_all(queue, build, done, before_data=lambda job: book.cross(job[1]))
            return

        async def worker() -> None:
            for job in queue:
                built = build(job)
                if isinstance(built, SendOutcome):
                    done(job, built)
                elif not await book.cross(job[1]):
                    done(job, SendOutcome(ok=False, error="not sent: lease lost",
                                          attempted=False))
                else:
                    done(job, await self.transport.send(built))

        await asyncio.gather(*(worker() for _ in range(self.wire_window)))

    def _budget_exceeded(self) -> bool:
        budget = self.campaign.error_budget
        if len(self.window) < budget.window:
            return False
        return self.window.count(True) / len(self.window) > budget.max_failure_ratio

    def _final_stats(self) -> dict[str, Any]:
        return {k: v for k, v in self.stats.items() if k != "invalid_examples"} | {
            "invalid_examples": self.stats.get("invalid_examples", [])[:5]}

    def _report(self) -> None:
        self.progress.stats = self.stats
        if self.progress_fn is not None:
            self.progress_fn(self.progress)


@dataclass(frozen=True)
class _Step:
    claim: claims.Claim | None
    wait_s: float
    suppressed: int
    adopted: int
