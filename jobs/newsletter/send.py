"""The send loop of one newsletter run: materialise, then claim → send → record, per batch.

ARCHITECTURE.md, invariants 3 and 4: every recipient is a ledger row before anything is sent; a
batch's
outcomes are committed in one transaction; pause state is re-read between batches. Counts for
reports live in ``runs.stats`` (updated every batch); bounces and failures are also
``tracking_events`` rows naming the recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobs.newsletter import claims, ledger, links, relay_auth, resume_ramp, zones
from jobs.newsletter.audiences import AudienceStats, iter_audience
from jobs.newsletter.prepare import Prepared, compose
from scheduler.context import ServiceContext
from scheduler.delivery.base import OutgoingMessage, SendOutcome, Transport
from scheduler.delivery.budget import TemplateBudgetExceeded
from scheduler.delivery.ratelimit import RateLimiter
from scheduler.errors import MartechError
from scheduler.kinds import RunResult
from scheduler.privacy import exclude_forgotten
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.tables import runs

log = logging.getLogger("martech.newsletter")

MATERIALISE_CHUNK = 2000
POLL_S = 0.5
# A batch's outcomes are only in memory until recorded: a transient database error (a lock, a
# dropped connection, a fail-over) is retried after these pauses before the run gives up and
# raises (the engine then re-spawns it; the rows still ``sending`` are resolved by policy).
RECORD_RETRY_DELAYS_S: tuple[float, ...] = (0.1, 0.5, 2.0)
TRANSIENT_DB_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)
# Renders over their budget in a row before the campaign is paused: each one costs a whole
# budget of CPU, and a template that is too slow for three recipients is for the rest.
OVER_BUDGET_PAUSE_AFTER = 3


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
    the engine) or ``wait`` (the ``martech send`` command: wait for resume in place)."""

    def __init__(self, ctx: ServiceContext, prepared: Prepared, run_id: int,
                 transport: Transport, *, on_pause: str = "return",
                 progress: ProgressFn | None = None) -> None:
        self.ctx = ctx
        self.prepared = prepared
        self.campaign = prepared.campaign
        self.run_id = run_id
        self.transport = transport
        self.on_pause = on_pause
        self.progress_fn = progress
        self.progress = Progress()
        send = self.campaign.send
        self.limiter = RateLimiter(f"newsletter:{self.campaign.name}",
                                   rate_per_s=send.rate_per_s, rate_per_h=send.rate_per_h)
        self.window: deque[bool] = deque(maxlen=self.campaign.error_budget.window)
        self.stats: dict[str, Any] = {}
        self.extra = {"job": self.campaign.name, "run_id": run_id}
        self.over_budget_in_a_row = 0
        self.over_budget: str | None = None  # set: pause the campaign, naming the template

    # -- materialise -------------------------------------------------------------------------

    def materialise(self) -> dict[str, Any]:
        """Stream the audience into the ledger (idempotent: re-running after a crash is safe)."""
        with self.ctx.begin() as conn:
            run = run_store.get(conn, self.run_id)
        stats = (run.stats if run else None) or {}
        if stats.get("materialised"):
            return dict(stats)
        plan = zones.plan_for(self.campaign, run) if run else None
        due_at = plan.due_at if plan else None
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
                    ledger.materialise(conn, self.run_id, chunk, due_at)
                chunk = []
        builder = self.prepared.builder
        probe = builder.message_id("ID")
        prefix, suffix = probe.split("ID", 1)
        with self.ctx.begin() as conn:
            ledger.materialise(conn, self.run_id, chunk, due_at)
            suppressed = ledger.exclude_suppressed(conn, self.run_id)
            suppressed += exclude_forgotten(conn, self.prepared.signer, self.run_id)
            late = 0
            if plan is not None and run is not None:
                late = ledger.skip_overdue(conn, self.run_id, zones.overdue_before(
                    self.campaign, run, self.ctx.clock.now(), first=True))
            ledger.assign_message_ids(conn, self.run_id, prefix, suffix)
            total = sum(ledger.counts(conn, self.run_id).values())
            stats = {"materialised": True, "audience_rows": audience.rows,
                     "invalid": audience.invalid, "filtered": audience.filtered,
                     "duplicates": max(0, streamed - total), "suppressed": suppressed,
                     "total": total, "invalid_examples": audience.examples,
                     **({**plan.stats(), "late": late} if plan is not None else {})}
            conn.execute(sa.update(runs).where(runs.c.id == self.run_id).values(stats=stats))
        log.info("audience materialised", extra={**self.extra, "action": "materialise",
                                                 **{k: v for k, v in stats.items()
                                                    if isinstance(v, int)}})
        return stats

    def _start(self) -> None:
        now = self.ctx.clock.now()
        with self.ctx.begin() as conn:
            self._load_ramp(conn, now)
            self.limiter.load(conn, now)
            run = run_store.get(conn, self.run_id)
            if run is not None and zones.plan_for(self.campaign, run) is not None:
                ledger.skip_overdue(conn, self.run_id, zones.overdue_before(
                    self.campaign, run, now, first=False))
        self._recover()

    def _load_ramp(self, conn: sa.Connection, now: datetime) -> None:
        """After a long pause the rate climbs back gently (``send.ramp``)."""
        found = resume_ramp.ramp_for(conn, self.campaign, now)
        ramp = self.campaign.send.ramp
        self.limiter.set_ramp(found[0] if found else None,
                              unlimited_rate_per_s=ramp.unlimited_rate_per_s)
        if found is None:
            return
        self.stats["ramp"] = {"since": found[0].since.isoformat(),
                              "until": found[0].until.isoformat(), "start": ramp.start}
        if resume_ramp.record(conn, self.campaign.name, self.run_id, *found, now):
            log.info("resuming gently after a long pause: %s", found[0].describe(),
                     extra={**self.extra, "action": "ramp"})

    def _resumed(self) -> None:
        """A pause ended while this sender waited (``martech send``): ramp from here."""
        now = self.ctx.clock.now()
        with self.ctx.begin() as conn:
            self._load_ramp(conn, now)
            self.limiter.load(conn, now)

    def _recover(self) -> int:
        """Resolve dead claimers' ``sending`` rows; return how many are still in flight."""
        now = self.ctx.clock.now()
        with self.ctx.begin() as conn:
            recovered = claims.recover(conn, self.run_id, self.campaign.send.delivery, now,
                                       node=self.ctx.node, settings=self.ctx.settings,
                                       own_live=self.own_live)
            self._refresh(conn)
            in_flight = ledger.in_flight(conn, self.run_id)
        if recovered:
            log.warning("%d deliveries were mid-send at a crash: %s", recovered,
                        "marked unknown" if self.campaign.send.delivery == "at_most_once"
                        else "re-sending with the same Message-ID",
                        extra={**self.extra, "action": "recover", "count": recovered})
        return in_flight

    def _refresh(self, conn: sa.Connection) -> None:
        counts = ledger.counts(conn, self.run_id)
        p = self.progress
        p.total = sum(counts.values())
        p.sent, p.failed = counts.get("sent", 0), counts.get("failed", 0)
        p.bounced, p.unknown = counts.get("bounced", 0), counts.get("unknown", 0)
        p.skipped = counts.get("skipped", 0)
        p.retrying = counts.get("pending", 0) + counts.get("sending", 0)
        self.stats.update(sent=p.sent, failed=p.failed, bounced=p.bounced, unknown=p.unknown,
                          pending=p.retrying)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> RunResult:
        with claims.active(str(self.ctx.db.url), self.ctx.node, self.run_id):
            return await self._run()

    @property
    def own_live(self) -> bool:
        """Another sender of this process is on the run: rows claimed under our node name
        may be its in-flight batch, not crash leftovers."""
        return claims.others_active(str(self.ctx.db.url), self.ctx.node, self.run_id)

    async def _run(self) -> RunResult:
        self.stats = await self.ctx.in_thread(self.materialise)
        await self.ctx.in_thread(self._start)
        links_ready = links.settled(self.prepared, self.stats)
        self._report()
        send = self.campaign.send
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
            if self.progress.paused is not None:
                await self.ctx.in_thread(self._resumed)
            self.progress.paused = None
            if not links_ready:  # checked before the first message; a broken one pauses
                links_ready = await links.before_first_message(
                    self.ctx, self.prepared, self.run_id, self.stats)
                continue
            batch_size = self.limiter.max_batch(send.batch_size, self.ctx.clock.now())
            wait_s = self.limiter.wait_s(batch_size, self.ctx.clock.now())
            if wait_s > 0:
                await self._sleep(min(wait_s, POLL_S))
                continue
            batch = await self.ctx.in_thread(self._claim, batch_size)
            if not batch:
                if not await self._idle():
                    break
                continue
            self.limiter.take(len(batch), self.ctx.clock.now())
            await self._send_and_judge(batch)
            self._report()
        return RunResult("done", None, self._final_stats())

    async def _idle(self) -> bool:
        """Nothing to claim now: wait for the next due row; False when the run is done."""
        next_at = await self.ctx.in_thread(self._next_retry)
        if next_at is None:
            # Another live sender's batch may still be in flight: the run is done when it is
            # recorded (or its claimer is found dead, or its lease ends).
            if not await self.ctx.in_thread(self._recover):
                return False
            await self._sleep(POLL_S)
            return True
        delay = (next_at - self.ctx.clock.now()).total_seconds()
        if delay > POLL_S:  # the next zone's 09:00: sleep on the clock, not poll
            await self.ctx.clock.sleep_until(next_at, self.ctx.stopping)
        else:
            await self._sleep(max(delay, 0.01))
        return True

    async def _send_and_judge(self, batch: list[ledger.DeliveryRow]) -> None:
        """Send and record one batch, then pause the campaign if the relay or the error
        budget says so (the pause check at the top of the loop decides what happens next)."""
        results = await self._send_batch(batch)
        unreachable = [row for row, out in results if out.unreachable]
        attempted = [(row, out) for row, out in results if not out.unreachable]
        await self._record(attempted, [r.id for r in unreachable])
        if await self._paused_over_budget():
            return
        if unreachable and not attempted and results[0][1].auth_failed:
            await self.ctx.in_thread(self._pause_auth, results[0][1].error or "535")
            log.error("SMTP relay refused our credentials; campaign paused, IT alerted",
                      extra={**self.extra, "action": "smtp_auth_failed"})
            return
        if unreachable and not attempted:
            error = results[0][1].error or "relay unreachable"
            await self.ctx.in_thread(self._pause, pauses.SMTP_UNREACHABLE, error)
            log.error("SMTP relay unreachable on every connection; campaign paused",
                      extra={**self.extra, "action": "smtp_unreachable"})
            return
        if self._budget_exceeded():
            ratio = self.window.count(True) / len(self.window)
            await self.ctx.in_thread(
                self._pause, pauses.ERROR_BUDGET,
                f"{ratio:.0%} of the last {len(self.window)} sends failed "
                f"(budget {self.campaign.error_budget.max_failure_ratio:.0%})")
            self.window.clear()

    async def _paused_over_budget(self) -> bool:
        """Pause the campaign if renders kept exceeding their budget (see _compose_all)."""
        if self.over_budget is None:
            return False
        await self.ctx.in_thread(self._pause, pauses.ERROR_BUDGET, self.over_budget)
        log.error("template over its render budget; campaign paused: %s", self.over_budget,
                  extra={**self.extra, "action": "render_budget"})
        self.over_budget = None
        return True

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

    def _pause_auth(self, error: str) -> None:
        with self.ctx.begin() as conn:
            relay_auth.pause(conn, self.campaign.name, self.ctx.settings, self.ctx.config,
                             self.ctx.clock.now(), error)

    def _claim(self, limit: int) -> list[ledger.DeliveryRow]:
        with self.ctx.begin() as conn:
            return ledger.claim_batch(conn, self.run_id, limit, self.ctx.node,
                                      self.ctx.clock.now())

    def _next_retry(self) -> Any:
        with self.ctx.begin() as conn:
            return ledger.next_retry_at(conn, self.run_id)

    def _compose_all(self, batch: list[ledger.DeliveryRow]
                     ) -> list[OutgoingMessage | SendOutcome]:
        """Render a batch (in a thread: a render may take its whole budget, and the event loop
        must keep serving the HTTP app and other campaigns meanwhile)."""
        out: list[OutgoingMessage | SendOutcome] = []
        for row in batch:
            if self.over_budget is not None:  # released, sent once the template is fixed
                out.append(SendOutcome(ok=False, unreachable=True, error="not rendered"))
                continue
            try:
                out.append(compose(self.prepared, row))
                self.over_budget_in_a_row = 0
            except MartechError as exc:  # a template or header problem for this row
                out.append(SendOutcome(ok=False, error=str(exc)[:500], permanent=True))
                if isinstance(exc, TemplateBudgetExceeded):
                    self.over_budget_in_a_row += 1
                    if self.over_budget_in_a_row >= OVER_BUDGET_PAUSE_AFTER:
                        self.over_budget_in_a_row = 0
                        self.over_budget = f"{OVER_BUDGET_PAUSE_AFTER} renders in a row: {exc}"
        return out

    async def _send_batch(self, batch: list[ledger.DeliveryRow]
                          ) -> list[tuple[ledger.DeliveryRow, SendOutcome]]:
        self.prepared.builder.set_date(self.ctx.clock.now())
        composed = await self.ctx.in_thread(self._compose_all, batch)
        outcomes: list[SendOutcome | None] = [None] * len(batch)
        queue = iter(enumerate(batch))
        transport = self.transport

        def build(job: tuple[int, ledger.DeliveryRow]) -> OutgoingMessage | SendOutcome:
            return composed[job[0]]

        def done(job: tuple[int, ledger.DeliveryRow], outcome: SendOutcome) -> None:
            outcomes[job[0]] = outcome

        send_all = getattr(transport, "send_all", None)
        if send_all is not None:  # the SMTP pool: one puller per connection, pipelined
            await send_all(queue, build, done)
        else:
            for job in queue:
                built = build(job)
                done(job, built if isinstance(built, SendOutcome)
                     else await transport.send(built))
        return [(row, out or SendOutcome(ok=False, error="not attempted"))
                for row, out in zip(batch, outcomes, strict=True)]

    async def _record(self, results: list[tuple[ledger.DeliveryRow, SendOutcome]],
                      release: list[int]) -> None:
        """Commit a batch's outcomes, retrying transient database errors (they are only in
        memory); the counters move once the transaction has committed."""
        for attempt, delay_s in enumerate((*RECORD_RETRY_DELAYS_S, None), start=1):
            try:
                tally = await self.ctx.in_thread(self._record_once, results, release)
                break
            except TRANSIENT_DB_ERRORS as exc:
                if delay_s is None:
                    log.error("cannot record a batch after %d attempts; its rows stay "
                              "'sending' and are resolved by policy when the run resumes",
                              attempt, extra={**self.extra, "action": "record_failed",
                                              "count": len(results)})
                    raise
                log.warning("recording a batch failed (%s); retrying in %.1fs",
                            type(exc).__name__, delay_s,
                            extra={**self.extra, "action": "record_retry", "attempt": attempt})
                await asyncio.sleep(delay_s)  # not _sleep: a stop must not drop outcomes
        p = self.progress
        p.sent += tally.sent
        p.failed += tally.failed
        p.bounced += tally.bounced
        p.retrying -= tally.sent + tally.failed + tally.bounced
        for _row, out in results:
            self.window.append(not out.ok)

    def _record_once(self, results: list[tuple[ledger.DeliveryRow, SendOutcome]],
                     release: list[int]) -> ledger.BatchTally:
        send = self.campaign.send
        with self.ctx.begin() as conn:
            ledger.release(conn, release)
            tally = ledger.record(conn, campaign=self.campaign.name, run_id=self.run_id,
                                  results=results, now=self.ctx.clock.now(),
                                  max_attempts=send.max_attempts, backoff=send.retry_backoff)
            self.limiter.save(conn)
            p = self.progress
            done = tally.sent + tally.failed + tally.bounced
            stats = dict(self.stats, sent=p.sent + tally.sent, failed=p.failed + tally.failed,
                         bounced=p.bounced + tally.bounced, unknown=p.unknown,
                         pending=p.retrying - done)
            conn.execute(sa.update(runs).where(runs.c.id == self.run_id).values(stats=stats))
        self.stats = stats
        return tally

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
