"""The outbox sender: delivers queued notifications (alerts, reminders, report mails).

Rows are claimed with a *lease*: claiming pushes ``next_attempt_at`` forward by ``LEASE`` and
counts the attempt, in one short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so
two nodes never send the same row at the same time. After sending, the outcome is recorded
in a second transaction: ``sent``, or back to ``pending`` with an exponential backoff and the
last error, or ``failed`` when the error is permanent or attempts are exhausted. A crash
between the two leaves the row pending, and it is retried once its lease expires: nothing is
lost, and only a row that was on the wire at the moment of the crash can go out twice.

A batch is sized so it can finish within its lease even if every send runs into its timeouts
(``lease_batch``), and ``record`` only writes a row still held by the same claim (its
``attempts`` count, bumped by every claim, is the claim token): a sender that overran its
lease cannot overwrite the outcome of the node that took the row over.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import sqlalchemy as sa

from scheduler.context import ServiceContext
from scheduler.delivery import notify
from scheduler.delivery.base import SendOutcome
from scheduler.delivery.webhook import post_json, safe_host
from scheduler.errors import MartechError
from scheduler.settings import Settings
from scheduler.store.dialect import skip_locked
from scheduler.store.tables import outbox

log = logging.getLogger("martech.outbox")

LEASE = timedelta(minutes=5)  # a whole batch must finish within it: see lease_batch
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=1)
MAX_ATTEMPTS = 30  # ~1 day at the capped backoff; then ``failed``, visible, never silent
POLL_S = 1.0
BATCH = 50  # upper bound; the real batch is lease_batch(settings)
LEASE_USE = 0.8  # a batch's worst case may use this share of the lease, the rest is margin
DEFAULT_FROM = "martech <martech@localhost>"
_WAKE_KEY = "outbox_wake"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    channel: str
    target: str
    payload: dict[str, Any]
    attempts: int  # including the one now being made
    created_ts: int = 0  # created_at as a Unix timestamp, for stable Message-IDs


def backoff(attempts: int) -> timedelta:
    """Delay before the next attempt after ``attempts`` failed ones: 30s, 1m, 2m, … ≤ 1h."""
    factor: int = 2 ** max(0, min(attempts - 1, 20))
    delay: timedelta = BACKOFF_BASE * factor
    return min(delay, BACKOFF_MAX)


def wake(ctx: ServiceContext) -> None:
    """Nudge the running sender after enqueueing, instead of waiting for its next poll."""
    event = ctx.extras.get(_WAKE_KEY)
    if isinstance(event, asyncio.Event):
        event.set()


def lease_batch(settings: Settings) -> int:
    """How many rows one claim may take: even if each send hits its connect and send
    timeouts one after another (one SMTP connection is used serially), the batch ends
    well within ``LEASE`` — otherwise another node could claim rows still being sent."""
    worst_s = max(settings.smtp_connect_timeout_s + settings.smtp_timeout_s,
                  settings.http_timeout_s)
    return max(1, min(BATCH, int(LEASE.total_seconds() * LEASE_USE // worst_s)))


def claim_due(ctx: ServiceContext, limit: int) -> list[OutboxRow]:
    """One transaction: take up to ``limit`` (at most ``lease_batch``) due rows; lease them."""
    now = ctx.clock.now()
    limit = min(limit, lease_batch(ctx.settings))
    with ctx.begin() as conn:
        select = (
            sa.select(outbox.c.id, outbox.c.topic, outbox.c.channel, outbox.c.target,
                      outbox.c.payload, outbox.c.attempts, outbox.c.created_at)
            .where(outbox.c.status == "pending", outbox.c.next_attempt_at <= now)
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(limit)
        )
        rows = conn.execute(skip_locked(conn, select)).all()
        claimed = [OutboxRow(r.id, r.topic, r.channel, r.target, dict(r.payload),
                             r.attempts + 1, int(r.created_at.timestamp())) for r in rows]
        for row in claimed:
            conn.execute(sa.update(outbox).where(outbox.c.id == row.id).values(
                attempts=row.attempts, next_attempt_at=now + LEASE))
    return claimed


def record(ctx: ServiceContext, results: list[tuple[OutboxRow, SendOutcome]]) -> list[int]:
    """One transaction: write every outcome of a batch; return the ids whose lease was lost.

    A row is only updated while still pending with the ``attempts`` this claim set: if the
    lease ran out and another claim took the row, that claim's outcome is the one kept.
    """
    now = ctx.clock.now()
    lost: list[int] = []
    with ctx.begin() as conn:
        for row, outcome in results:
            values: dict[str, Any]
            if outcome.ok:
                values = {"status": "sent", "sent_at": now, "next_attempt_at": None}
            elif outcome.permanent or row.attempts >= MAX_ATTEMPTS:
                values = {"status": "failed", "next_attempt_at": None,
                          "last_error": outcome.error}
            else:
                values = {"next_attempt_at": now + backoff(row.attempts),
                          "last_error": outcome.error}
            done = conn.execute(sa.update(outbox).where(
                outbox.c.id == row.id, outbox.c.status == "pending",
                outbox.c.attempts == row.attempts).values(**values))
            if done.rowcount == 0:
                lost.append(row.id)
    for row_id in lost:
        log.warning("outbox lease lost: another claim owns the row; outcome not recorded",
                    extra={"action": "outbox_lease_lost", "outbox_id": row_id})
    return lost


async def _send_email(ctx: ServiceContext, row: OutboxRow) -> SendOutcome:
    payload = row.payload
    from_ = str(payload.get("from") or DEFAULT_FROM)
    headers = {str(k): str(v) for k, v in dict(payload.get("headers") or {}).items()}
    try:
        domain = notify.bare_address(from_).rsplit("@", 1)[1]
        # Deterministic per row: a resend after a crash carries the same Message-ID.
        headers.setdefault("Message-ID", f"outbox-{row.id}.{row.created_ts}@{domain}")
        message = notify.build_notification(
            from_=from_, to=row.target, subject=str(payload.get("subject") or "(no subject)"),
            text=str(payload.get("text", "")), html=payload.get("html"), headers=headers,
            now=ctx.clock.now(), images=_images(payload),
        )
    except MartechError as exc:  # bad address, header injection: retrying cannot help
        return SendOutcome(ok=False, error=str(exc), permanent=True)
    run_id = payload.get("run_id")
    message = replace(message, campaign=payload.get("campaign") or f"_{row.topic}",
                      run_id=run_id if isinstance(run_id, int) else None)
    return await notify.send_notification(ctx, message)


def _images(payload: dict[str, Any]) -> dict[str, bytes]:
    """``payload["images"]``: Content-ID → base64 PNG (JSON cannot hold bytes)."""
    raw = payload.get("images") or {}
    return {str(cid): base64.b64decode(data) for cid, data in dict(raw).items()}


def webhook_body(payload: dict[str, Any]) -> dict[str, Any]:
    """The JSON to POST: the payload minus private ``_``-prefixed keys (like ``_format``)."""
    return {k: v for k, v in payload.items() if not k.startswith("_")}


async def _send_one(ctx: ServiceContext, row: OutboxRow, session: Any) -> SendOutcome:
    try:
        if row.channel == "email":
            return await _send_email(ctx, row)
        if row.channel == "webhook":
            return await post_json(session, row.target, webhook_body(row.payload),
                                   timeout_s=ctx.settings.http_timeout_s)
        return SendOutcome(ok=False, error=f"unknown channel {row.channel!r}", permanent=True)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bad row must not stop the others; it is retried
        log.exception("outbox send crashed", extra={"action": "outbox_error",
                                                    "outbox_id": row.id})
        return SendOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")


def _where(row: OutboxRow) -> str:
    return safe_host(row.target) if row.channel == "webhook" else row.target


async def deliver_due(ctx: ServiceContext, limit: int = BATCH) -> int:
    """Send every due pending row (up to ``limit``); return how many rows were attempted."""
    rows = await ctx.in_thread(claim_due, ctx, limit)
    if not rows:
        return 0
    session: Any = None
    if any(r.channel == "webhook" for r in rows):
        session = aiohttp.ClientSession()
    try:
        outcomes = await asyncio.gather(*(_send_one(ctx, row, session) for row in rows))
    finally:
        if session is not None:
            await session.close()
    results = list(zip(rows, outcomes, strict=True))
    await ctx.in_thread(record, ctx, results)
    for row, outcome in results:
        extra = {"action": "outbox_sent" if outcome.ok else "outbox_retry",
                 "outbox_id": row.id, "topic": row.topic, "channel": row.channel,
                 "target": _where(row), "attempts": row.attempts}
        if outcome.ok:
            log.info("notification sent", extra=extra)
        else:
            log.warning("notification not sent: %s", outcome.error, extra=extra)
    return len(rows)


async def run_outbox(ctx: ServiceContext) -> None:
    """Background component: deliver due rows until ``ctx.stopping`` is set."""
    event = ctx.extras.setdefault(_WAKE_KEY, asyncio.Event())
    batch = lease_batch(ctx.settings)
    while not ctx.stopping.is_set():
        try:
            sent = await deliver_due(ctx, batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbox pass failed; retrying", extra={"action": "outbox_error"})
            sent = 0
        if sent >= batch:
            continue  # more may be due right now
        event.clear()
        waiter = asyncio.ensure_future(event.wait())
        stopper = asyncio.ensure_future(ctx.stopping.wait())
        await asyncio.wait({waiter, stopper}, timeout=POLL_S,
                           return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, stopper):
            task.cancel()


def pending_count(conn: sa.Connection) -> int:
    stmt = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.status == "pending")
    return int(conn.execute(stmt).scalar_one())


def next_due(conn: sa.Connection) -> datetime | None:
    stmt = sa.select(sa.func.min(outbox.c.next_attempt_at)).where(outbox.c.status == "pending")
    value = conn.execute(stmt).scalar_one_or_none()
    return value if isinstance(value, datetime) else None
