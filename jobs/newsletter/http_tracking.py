"""``/c/<token>`` (click redirect) and ``/o/<token>.gif`` (open pixel) (ARCHITECTURE.md,
invariant 9).

A click only redirects to the URL inside a genuine HMAC-signed token, and only to http(s):
anything forged, altered or unsafe gets a 400 with no Location. Each click records a
``clicked`` event; an open records one ``opened`` event per delivery and traffic
class (jobs/newsletter/traffic.py: human, machine, suspect), however often the pixel is
fetched. Recipients never reach the logs.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from jobs.newsletter.traffic import classify
from scheduler.clock import utc
from scheduler.context import ServiceContext
from scheduler.delivery.tokens import verify_click, verify_open
from scheduler.keys import signer_for
from scheduler.store.tables import deliveries, runs, tracking_events

log = logging.getLogger("martech.http")

MAX_TOKEN_CHARS = 4096  # a token carries the target URL; real ones stay far below this
# The smallest transparent GIF (1x1, one transparent colour).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
}


@dataclass(frozen=True)
class _Delivery:
    campaign: str | None
    run_id: int | None
    recipient: str | None
    sent_at: datetime | None


@dataclass(frozen=True)
class Signals:
    """What the request says about who is asking (stored beside the event)."""

    ip: str | None = None
    user_agent: str | None = None


def _delivery(conn: sa.Connection, delivery_id: int, *, lock: bool = False) -> _Delivery:
    stmt = (sa.select(runs.c.campaign, deliveries.c.run_id, deliveries.c.recipient,
                      deliveries.c.sent_at)
            .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
            .where(deliveries.c.id == delivery_id))
    if lock:
        # Two fetches of one pixel at once on PostgreSQL: the second waits here, then sees
        # the first one's event. SQLite's BEGIN IMMEDIATE already serialises writers.
        stmt = stmt.with_for_update(of=deliveries)
    row = conn.execute(stmt).first()
    if row is None:
        return _Delivery(None, None, None, None)
    return _Delivery(row.campaign, row.run_id, row.recipient, row.sent_at)


def _seen(conn: sa.Connection, delivery_id: int, kind: str, traffic: str) -> bool:
    return conn.execute(sa.select(sa.literal(1)).where(
        tracking_events.c.delivery_id == delivery_id, tracking_events.c.kind == kind,
        tracking_events.c.traffic == traffic).limit(1)).first() is not None


def _event_row(kind: str, delivery_id: int, found: _Delivery, signals: Signals,
               now: datetime) -> dict[str, Any]:
    after_s = None if found.sent_at is None else (now - utc(found.sent_at)).total_seconds()
    verdict = classify(signals.user_agent, signals.ip, after_s)
    return {"at": now, "kind": kind, "campaign": found.campaign, "run_id": found.run_id,
            "delivery_id": delivery_id, "recipient": found.recipient,
            "ip": (signals.ip or None) and signals.ip[:64],
            "user_agent": (signals.user_agent or None) and signals.user_agent[:500],
            "after_send_s": after_s, "traffic": verdict.traffic, "agent": verdict.agent}


def record_click(conn: sa.Connection, delivery_id: int, url: str, now: datetime,
                 signals: Signals = Signals()) -> None:
    """Every click is kept (clicks per link); ``first`` marks the first per traffic class."""
    found = _delivery(conn, delivery_id, lock=True)
    row = _event_row("clicked", delivery_id, found, signals, now)
    row["first"] = not _seen(conn, delivery_id, "clicked", row["traffic"])
    conn.execute(sa.insert(tracking_events).values(url=url, **row))


def record_open(conn: sa.Connection, delivery_id: int, now: datetime,
                signals: Signals = Signals()) -> bool:
    """Record the first open of a delivery per traffic class; True if this call recorded it.

    A privacy proxy's prefetch does not hide the person's own open later, and a person
    reloading the pixel is one open.
    """
    found = _delivery(conn, delivery_id, lock=True)
    row = _event_row("opened", delivery_id, found, signals, now)
    if _seen(conn, delivery_id, "opened", row["traffic"]):
        return False
    conn.execute(sa.insert(tracking_events).values(first=True, **row))
    return True


def signals_of(request: web.Request, trust_forwarded: bool) -> Signals:
    """The client's address (behind the reverse proxy: the last X-Forwarded-For hop)."""
    ip = request.remote
    forwarded = request.headers.get("X-Forwarded-For")
    if trust_forwarded and forwarded:
        ip = forwarded.split(",")[-1].strip()
    return Signals(ip, request.headers.get("User-Agent"))


def _bad_token() -> web.Response:
    return web.Response(status=400, text="This link is not valid.\n", headers=_NO_CACHE)


class TrackingHandlers:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.signer = signer_for(ctx.settings)

    async def click(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        found = verify_click(self.signer, token) if len(token) <= MAX_TOKEN_CHARS else None
        if found is None:
            log.info("click rejected: invalid token", extra={"action": "click_bad"})
            return _bad_token()
        delivery_id, url = found
        signals = signals_of(request, self.ctx.settings.http_trust_forwarded)
        await self.ctx.in_thread(self._click, delivery_id, url, signals)
        return web.Response(status=302, headers={**_NO_CACHE, "Location": url})

    async def open(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        delivery_id = verify_open(self.signer, token) if len(token) <= MAX_TOKEN_CHARS else None
        if delivery_id is None:
            return _bad_token()
        signals = signals_of(request, self.ctx.settings.http_trust_forwarded)
        await self.ctx.in_thread(self._open, delivery_id, signals)
        return web.Response(body=PIXEL_GIF, content_type="image/gif", headers=_NO_CACHE)

    def _click(self, delivery_id: int, url: str, signals: Signals) -> None:
        with self.ctx.begin() as conn:
            record_click(conn, delivery_id, url, self.ctx.clock.now(), signals)

    def _open(self, delivery_id: int, signals: Signals) -> None:
        with self.ctx.begin() as conn:
            record_open(conn, delivery_id, self.ctx.clock.now(), signals)


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    """The exact paths jobs/newsletter/tracking.py puts after MARTECH_PUBLIC_BASE_URL."""
    handlers = TrackingHandlers(ctx)
    app.router.add_get(r"/c/{token}", handlers.click)
    app.router.add_get(r"/o/{token}.gif", handlers.open)
