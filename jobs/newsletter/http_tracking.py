"""``/c/<token>`` (click redirect) and ``/o/<token>.gif`` (open pixel) (ARCHITECTURE.md,
invariant 9).

A click only redirects to the URL inside a genuine HMAC-signed token, and only to http(s):
anything forged, altered or unsafe gets a 400 with no Location. Each click records a
``clicked`` event; an open records one ``opened`` event per delivery, however often the
pixel is fetched. Recipients never reach the logs.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from aiohttp import web

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


def _delivery(conn: sa.Connection, delivery_id: int, *, lock: bool = False) -> _Delivery:
    stmt = (sa.select(runs.c.campaign, deliveries.c.run_id, deliveries.c.recipient)
            .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
            .where(deliveries.c.id == delivery_id))
    if lock:
        # Two fetches of one pixel at once on PostgreSQL: the second waits here, then sees
        # the first one's event. SQLite's BEGIN IMMEDIATE already serialises writers.
        stmt = stmt.with_for_update(of=deliveries)
    row = conn.execute(stmt).first()
    return _Delivery(row.campaign, row.run_id, row.recipient) if row else _Delivery(None, None,
                                                                                    None)


def record_click(conn: sa.Connection, delivery_id: int, url: str, now: datetime) -> None:
    found = _delivery(conn, delivery_id)
    conn.execute(sa.insert(tracking_events).values(
        at=now, kind="clicked", campaign=found.campaign, run_id=found.run_id,
        delivery_id=delivery_id, recipient=found.recipient, url=url))


def record_open(conn: sa.Connection, delivery_id: int, now: datetime) -> bool:
    """Record the first open of a delivery; True if this call recorded it."""
    found = _delivery(conn, delivery_id, lock=True)
    seen = conn.execute(sa.select(sa.literal(1)).where(
        tracking_events.c.delivery_id == delivery_id,
        tracking_events.c.kind == "opened").limit(1)).first()
    if seen is not None:
        return False
    conn.execute(sa.insert(tracking_events).values(
        at=now, kind="opened", campaign=found.campaign, run_id=found.run_id,
        delivery_id=delivery_id, recipient=found.recipient))
    return True


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
        await self.ctx.in_thread(self._click, delivery_id, url)
        return web.Response(status=302, headers={**_NO_CACHE, "Location": url})

    async def open(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        delivery_id = verify_open(self.signer, token) if len(token) <= MAX_TOKEN_CHARS else None
        if delivery_id is None:
            return _bad_token()
        await self.ctx.in_thread(self._open, delivery_id)
        return web.Response(body=PIXEL_GIF, content_type="image/gif", headers=_NO_CACHE)

    def _click(self, delivery_id: int, url: str) -> None:
        with self.ctx.begin() as conn:
            record_click(conn, delivery_id, url, self.ctx.clock.now())

    def _open(self, delivery_id: int) -> None:
        with self.ctx.begin() as conn:
            record_open(conn, delivery_id, self.ctx.clock.now())


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    """The exact paths jobs/newsletter/tracking.py puts after MARTECH_PUBLIC_BASE_URL."""
    handlers = TrackingHandlers(ctx)
    app.router.add_get(r"/c/{token}", handlers.click)
    app.router.add_get(r"/o/{token}.gif", handlers.open)
