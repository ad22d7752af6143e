"""``/unsubscribe/<token>``: the page behind the List-Unsubscribe link, and RFC 8058 one-click.

GET only shows a confirmation form: mail scanners pre-fetch links, so a GET never unsubscribes.
POST (our form, or a mailbox provider's one-click ``List-Unsubscribe=One-Click``) suppresses
the address and records one ``unsubscribed`` event per (campaign, address), however often it
is repeated; POSTs are rate-limited per client address. The token names the delivery, never
the address, which is looked up here. Nothing here redirects, and the address never reaches
the logs — only the campaign, the domain and a short keyed hash to correlate lines.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from aiohttp import web

from scheduler.context import ServiceContext
from scheduler.delivery.tokens import UnsubscribeRef, verify_unsubscribe
from scheduler.http_limits import ClientAddress, RateLimiter
from scheduler.keys import signer_for
from scheduler.logs import address_ref
from scheduler.privacy import is_pseudonym
from scheduler.store import suppressions as suppression_store
from scheduler.store.tables import deliveries, runs, suppressions, tracking_events

log = logging.getLogger("martech.http")

MAX_TOKEN_CHARS = 2048  # real tokens are ~100-600 characters; anything longer is noise
ONE_CLICK_BODY = "List-Unsubscribe=One-Click"

# The page has no external resources or links; no-referrer keeps the token out of Referer
# headers all the same, and no-store keeps it out of shared caches.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body {{ font-family: sans-serif; max-width: 32rem; margin: 3rem auto; padding: 0 1rem; }}
button {{ font-size: 1rem; padding: .5rem 1rem; }}</style>
</head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


@dataclass(frozen=True)
class Recipient:
    """Whom a delivery's token unsubscribes."""

    delivery_id: int
    run_id: int
    campaign: str
    email: str | None  # None once the person was forgotten (already suppressed by hash)


def recipient_of(conn: sa.Connection, delivery_id: int) -> Recipient | None:
    row = conn.execute(
        sa.select(deliveries.c.run_id, deliveries.c.recipient, runs.c.campaign)
        .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
        .where(deliveries.c.id == delivery_id)).first()
    if row is None:
        return None
    email = None if is_pseudonym(row.recipient) else str(row.recipient)
    return Recipient(delivery_id, int(row.run_id), str(row.campaign), email)


def record_unsubscribe(conn: sa.Connection, campaign: str, email: str, now: datetime, *,
                       delivery_id: int | None = None, run_id: int | None = None) -> bool:
    """Suppress ``email`` and record the event once; True if this call recorded it."""
    suppression_store.add(conn, email, "unsubscribed", now, campaign=campaign)
    # Two clicks at once on PostgreSQL: the second waits on this row lock, then sees the
    # first one's event. SQLite needs nothing: BEGIN IMMEDIATE already serialises writers.
    conn.execute(sa.select(suppressions.c.email)
                 .where(suppressions.c.email == email.strip().lower()).with_for_update())
    seen = conn.execute(sa.select(sa.literal(1)).where(
        tracking_events.c.kind == "unsubscribed", tracking_events.c.campaign == campaign,
        tracking_events.c.recipient == email).limit(1)).first()
    if seen is not None:
        return False
    conn.execute(sa.insert(tracking_events).values(
        at=now, kind="unsubscribed", campaign=campaign, recipient=email, run_id=run_id,
        delivery_id=delivery_id))
    return True


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=_PAGE.format(title=html.escape(title), body=body),
                        content_type="text/html", charset="utf-8", headers=_HEADERS)


def _bad_token() -> web.Response:
    return web.Response(status=400, text="This unsubscribe link is not valid.\n",
                        headers=_HEADERS)


def _test_message(scope: str | None) -> web.Response:
    return _page("Test message", f"<p>This link came from a test of "
                                 f"<strong>{html.escape(scope or '')}</strong>: it unsubscribes "
                                 "no one, and nothing was changed.</p>")


class UnsubscribeHandlers:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.signer = signer_for(ctx.settings)
        self.client = ClientAddress(ctx.settings.http_trusted_proxies)
        self.limiter = RateLimiter(ctx.settings.unsubscribe_posts_per_min, ctx.clock.now)

    def _verify(self, request: web.Request) -> UnsubscribeRef | None:
        token = request.match_info["token"]
        if len(token) > MAX_TOKEN_CHARS:
            return None
        return verify_unsubscribe(self.signer, token)

    def _lookup(self, delivery_id: int) -> Recipient | None:
        with self.ctx.begin() as conn:
            return recipient_of(conn, delivery_id)

    async def show(self, request: web.Request) -> web.Response:
        ref = self._verify(request)
        if ref is None:
            return _bad_token()
        if ref.delivery_id is None:
            return _test_message(ref.scope)
        found = await self.ctx.in_thread(self._lookup, ref.delivery_id)
        if found is None:
            return _bad_token()
        whom = (f"<strong>{html.escape(found.email)}</strong>" if found.email
                else "this address")
        # action="" posts back to this very URL, whatever prefix a reverse proxy strips.
        body = (f"<p>Stop sending <strong>{html.escape(found.campaign)}</strong> and other "
                f"newsletters to {whom}?</p>\n"
                '<form method="post" action="">'
                '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
                "<button type=\"submit\">Unsubscribe</button></form>")
        return _page("Unsubscribe", body)

    async def confirm(self, request: web.Request) -> web.Response:
        if not self.limiter.allow(self.client(request)):
            log.info("unsubscribe refused: too many from one client",
                     extra={"action": "unsubscribe_limited"})
            return web.Response(status=429, text="Too many requests; try again later.\n",
                                headers={**_HEADERS,
                                         "Retry-After": str(self.limiter.retry_after_s())})
        ref = self._verify(request)
        if ref is None:
            log.info("unsubscribe rejected: invalid token", extra={"action": "unsubscribe_bad"})
            return _bad_token()
        body = await request.text()  # bounded by the app's client_max_size
        one_click = body.strip() == ONE_CLICK_BODY
        if ref.delivery_id is None:
            return _test_message(ref.scope)
        found, recorded = await self.ctx.in_thread(self._record, ref.delivery_id)
        if found is None:
            log.info("unsubscribe rejected: no such delivery",
                     extra={"action": "unsubscribe_bad"})
            return _bad_token()
        log.info("unsubscribed" if recorded else "unsubscribe repeated",
                 extra={"action": "unsubscribe", "job": found.campaign,
                        "address": address_ref(found.email) if found.email else "forgotten",
                        "one_click": one_click, "recorded": recorded})
        if "text/html" not in request.headers.get("Accept", ""):  # a mailbox provider's POST
            return web.Response(text="unsubscribed\n", headers=_HEADERS)
        whom = f"<strong>{html.escape(found.email)}</strong>" if found.email else "This address"
        return _page("Unsubscribed", f"<p>{whom} will not receive our newsletters any more.</p>")

    def _record(self, delivery_id: int) -> tuple[Recipient | None, bool]:
        with self.ctx.begin() as conn:
            found = recipient_of(conn, delivery_id)
            if found is None or found.email is None:  # forgotten: suppressed by hash already
                return found, False
            return found, record_unsubscribe(conn, found.campaign, found.email,
                                             self.ctx.clock.now(), delivery_id=delivery_id,
                                             run_id=found.run_id)


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    """The exact path jobs/newsletter/prepare.py puts after MARTECH_PUBLIC_BASE_URL."""
    handlers = UnsubscribeHandlers(ctx)
    app.router.add_get("/unsubscribe/{token}", handlers.show)
    app.router.add_post("/unsubscribe/{token}", handlers.confirm)
