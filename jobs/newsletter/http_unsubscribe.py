"""``/unsubscribe/<token>``: the page behind the List-Unsubscribe link, and RFC 8058 one-click.

GET only shows a confirmation form: mail scanners pre-fetch links, so a GET never unsubscribes.
POST (our form, or a mailbox provider's one-click ``List-Unsubscribe=One-Click``) suppresses
the address and records one ``unsubscribed`` event per (campaign, address), however often it
is repeated. Nothing here redirects, and the address never reaches the logs — only the
campaign, the domain and a short hash to correlate lines.
"""

from __future__ import annotations

import hashlib
import html
import logging
from datetime import datetime

import sqlalchemy as sa
from aiohttp import web

from scheduler.context import ServiceContext
from scheduler.delivery.tokens import Signer, verify_unsubscribe
from scheduler.store import suppressions as suppression_store
from scheduler.store.tables import suppressions, tracking_events

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


def address_ref(email: str) -> str:
    """What the logs may say about an address: its domain and a short hash."""
    digest = hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()[:12]
    return f"{email.rpartition('@')[2].lower()}#{digest}"


def record_unsubscribe(conn: sa.Connection, campaign: str, email: str, now: datetime) -> bool:
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
        at=now, kind="unsubscribed", campaign=campaign, recipient=email))
    return True


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=_PAGE.format(title=html.escape(title), body=body),
                        content_type="text/html", charset="utf-8", headers=_HEADERS)


def _bad_token() -> web.Response:
    return web.Response(status=400, text="This unsubscribe link is not valid.\n",
                        headers=_HEADERS)


class UnsubscribeHandlers:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.signer = Signer(ctx.settings.secret_key.get_secret_value())

    def _verify(self, request: web.Request) -> tuple[str, str] | None:
        token = request.match_info["token"]
        if len(token) > MAX_TOKEN_CHARS:
            return None
        return verify_unsubscribe(self.signer, token)

    async def show(self, request: web.Request) -> web.Response:
        found = self._verify(request)
        if found is None:
            return _bad_token()
        campaign, email = found
        # action="" posts back to this very URL, whatever prefix a reverse proxy strips.
        body = (f"<p>Stop sending <strong>{html.escape(campaign)}</strong> and other "
                f"newsletters to <strong>{html.escape(email)}</strong>?</p>\n"
                '<form method="post" action="">'
                '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
                "<button type=\"submit\">Unsubscribe</button></form>")
        return _page("Unsubscribe", body)

    async def confirm(self, request: web.Request) -> web.Response:
        found = self._verify(request)
        if found is None:
            log.info("unsubscribe rejected: invalid token", extra={"action": "unsubscribe_bad"})
            return _bad_token()
        campaign, email = found
        body = await request.text()  # bounded by the app's client_max_size
        one_click = body.strip() == ONE_CLICK_BODY
        recorded = await self.ctx.in_thread(self._record, campaign, email)
        log.info("unsubscribed" if recorded else "unsubscribe repeated",
                 extra={"action": "unsubscribe", "job": campaign, "address": address_ref(email),
                        "one_click": one_click, "recorded": recorded})
        if "text/html" not in request.headers.get("Accept", ""):  # a mailbox provider's POST
            return web.Response(text="unsubscribed\n", headers=_HEADERS)
        return _page("Unsubscribed", f"<p><strong>{html.escape(email)}</strong> will not "
                                     "receive our newsletters any more.</p>")

    def _record(self, campaign: str, email: str) -> bool:
        with self.ctx.begin() as conn:
            return record_unsubscribe(conn, campaign, email, self.ctx.clock.now())


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    """The exact path jobs/newsletter/prepare.py puts after MARTECH_PUBLIC_BASE_URL."""
    handlers = UnsubscribeHandlers(ctx)
    app.router.add_get("/unsubscribe/{token}", handlers.show)
    app.router.add_post("/unsubscribe/{token}", handlers.confirm)
