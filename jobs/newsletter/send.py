"""The send loop of one newsletter run: materialise, then claim → send → record, per batch.

ARCHITECTURE.md, invariants 3, 4 and 8: every recipient is a ledger row before anything is sent;
a batch is claimed under a lease with a fencing token (``claims.py``), each message is marked
``on_wire`` before its content goes out and its outcome group-committed after (``wire.py``);
pause state is re-read between batches. Any number of senders work one run at once — the run's
owner (the engine's execution, or ``martech send --now``) and a helper on every other node
(``helper.py``); only the owner materialises and finishes the run. Counts for reports live in
``runs.stats``, written by the owner from the ledger; bounces and failures are also
``tracking_events`` rows naming the recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from jobs.newsletter import claims, ledger
from jobs.newsletter.audiences import AudienceStats, iter_audience
from jobs.newsletter.prepare import Prepared, compose
from jobs.newsletter.wire import WireBook
from scheduler.context import ServiceContext
from scheduler.delivery.base import OutgoingMessage, SendOutcome, Transport
from scheduler.delivery.ratelimit import RateLimiter
from scheduler.errors import MartechError
from scheduler.kinds import RunResult
from scheduler.store import pauses
from scheduler.store.dbclock import db_now
from scheduler.store.tables import runs

log = logging.getLogger("martech.newsletter")

MATERIALISE_CHUNK = 2000
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
        self._stats_at = 0.0
        # claims made, claims that came back short because another node held the rows left,
        # rows adopted from dead claims, rows suppressed at claim time.
        self.counters: Counter[str] = Counter(claims=0, contended=0, adopted=0, suppressed=0)

    # -- materialise -------------------------------------------------------------------------

    def materialise(self) -> dict[str, Any]:
        """Stream the audience into the ledger (idempotent: re-running after a crash is safe)."""
        stats = self._stored_stats()
        if stats.get("materialised"):
            return stats
        audience = AudienceStats()
        streamed = 0
        chunk: list[tuple[str, dict[str, Any]]] = []
        rows = iter_audience(self.campaign.audience, self.campaign.segment,
                             self.ctx.config.config_dir, audience)
        for item in rows:
            chunk.append(item)
            streamed += 1
            if len(chunk) >= MATERIALISE_CHUNK:
                with self.ctx.begin() as conn:
                    ledger.materialise(conn, self.run_id, chunk)
                chunk = []
        builder = self.prepared.builder
        probe = builder.message_id("ID")
        prefix, suffix = probe.split("ID", 1)
        with self.ctx.begin() as conn:
            ledger.materialise(conn, self.run_id, chunk)
            suppressed = ledger.exclude_suppressed(conn, self.run_id)
            ledger.assign_message_ids(conn, self.run_id, prefix, suffix)
            total = sum(ledger.counts(conn, self.run_id).values())
            stats = {"materialised": True, "audience_rows": audience.rows,
                     "invalid": audience.invalid, "filtered": audience.filtered,
                     "duplicates": max(0, streamed - total), "suppressed": suppressed,
                     "total": total, "invalid_examples": audience.examples}
            conn.execute(sa.update(runs).where(runs.c.id == self.run_id).values(stats=stats))
        log.info("audience materialised", extra={**self.extra, "action": "materialise",
                                                 **{k: v for k, v in stats.items()
                                                    if isinstance(v, int)}})
        return stats

    def _stored_stats(self) -> dict[str, Any]:
        with self.ctx.begin() as conn:
            stored = conn.execute(sa.select(runs.c.stats).where(runs.c.id == self.run_id)
                                  ).scalar()
        return dict(stored or {})

    def _refresh(self, *, write: bool) -> None:
        """Progress and stats from the ledger (every sender's work counts), written to the
        run row by the owner."""
        with self.ctx.begin() as conn:
            counts = ledger.counts(conn, self.run_id)
            p = self.progress
            p.total = sum(counts.values())
            p.sent, p.failed = counts.get("sent", 0), counts.get("failed", 0)
            p.bounced, p.unknown = counts.get("bounced", 0), counts.get("unknown", 0)
            p.skipped = counts.get("skipped", 0) + counts.get("suppressed", 0)
            p.retrying = counts.get("pending", 0) + counts.get("sending", 0)
            self.stats.update(sent=p.sent, failed=p.failed, bounced=p.bounced,
                              unknown=p.unknown, pending=p.retrying,
                              suppressed=counts.get("suppressed", 0))
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

    async def _run(self) -> RunResult:
        if self.helper:
            self.stats = await self.ctx.in_thread(self._stored_stats)
            if not self.stats.get("materialised"):
                return RunResult("done", "the run's owner has not materialised it yet")
        else:
            self.stats = await self.ctx.in_thread(self.materialise)
        await self.ctx.in_thread(lambda: self._refresh(write=False))
        self._report()
        batch_size = self.limiter.max_batch(self.campaign.send.batch_size)
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
            self.progress.paused = None
            step = await self.ctx.in_thread(self._claim, batch_size)
            if step.wait_s > 0:  # the campaign's shared rate bucket is empty for now
                await self._sleep(min(step.wait_s, POLL_S))
                continue
            if step.claim is None:
                if step.suppressed or step.adopted:
                    continue
                if self.helper:
                    return RunResult("done", "nothing left to claim", self._final_stats())
                wait_s = await self.ctx.in_thread(self._left)
                if wait_s is None:
                    break
                await self._sleep(min(max(wait_s, 0.01), POLL_S))
                continue
            await self._work(step.claim)
        await self.ctx.in_thread(lambda: self._refresh(write=True))
        return RunResult("done", None, self._final_stats())

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
        if unreachable and len(unreachable) == len(results):
            await self.ctx.in_thread(self._pause, pauses.SMTP_UNREACHABLE,
                                     unreachable[0].error or "relay unreachable")
            log.error("SMTP relay unreachable on every connection; campaign paused",
                      extra={**self.extra, "action": "smtp_unreachable"})
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
        if adopted.in_doubt and self.policy.delivery == ledger.AT_MOST_ONCE:
            log.warning("%d deliveries were mid-send when their sender died: marked unknown",
                        adopted.in_doubt, extra={**self.extra, "action": "recover",
                                                 "count": adopted.in_doubt})
        elif adopted.in_doubt:
            log.warning("%d deliveries were mid-send when their sender died: re-sending with "
                        "the same Message-ID", adopted.in_doubt,
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
            due_in_s = ledger.next_retry_in_s(conn, self.run_id, db_now(conn))
            in_flight = ledger.in_flight(conn, self.run_id)
        if due_in_s is None and not in_flight:
            return None
        return POLL_S if due_in_s is None else due_in_s

    async def _send_batch(self, claim: claims.Claim
                          ) -> tuple[list[tuple[ledger.DeliveryRow, SendOutcome]],
                                     ledger.BatchTally]:
        self.prepared.builder.set_date(self.ctx.clock.now())
        book = WireBook(self.ctx, claim, campaign=self.campaign.name, policy=self.policy,
                        window=self.wire_window).start()
        outcomes: list[SendOutcome | None] = [None] * len(claim.rows)
        prepared = self.prepared

        def jobs() -> Iterator[Job]:
            rows, ahead = claim.rows, self.wire_window
            for job in enumerate(rows):
                if book.stopped:  # the claim is another node's now, or cannot be recorded
                    return
                # Ask for the marks of the next rows before they are pulled, so a mark is
                # usually committed by the time its message reaches DATA (the window still
                # bounds how many are granted).
                for row in rows[job[0]:job[0] + ahead]:
                    book.want(row)
                yield job

        def build(job: Job) -> OutgoingMessage | SendOutcome:
            try:
                message = compose(prepared, job[1])
            except MartechError as exc:  # a template or header problem for this row
                return SendOutcome(ok=False, error=str(exc)[:500], permanent=True)
            book.want(job[1])
            return message

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
