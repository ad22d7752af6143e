"""Background component: clear ``smtp_unreachable`` pauses once the relay answers again.

The sender pauses a campaign when every connection to the relay fails (rather than failing
the whole list); this probe connects every ``PROBE_INTERVAL_S`` and lifts that pause reason —
only that one — when a connection and a NOOP succeed. Held runs then resume via the engine.

``smtp_auth_failed`` pauses (a 535) are different: the probe logs in again only when the
running credentials differ from the refused ones (``relay_auth``), never with the same ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiosmtplib

from jobs.newsletter import relay_auth
from scheduler.context import ServiceContext
from scheduler.settings import Settings, SmtpSecurity, TransportKind
from scheduler.store import pauses

log = logging.getLogger("martech.newsletter")

PROBE_INTERVAL_S = 30.0


def _client(s: Settings) -> aiosmtplib.SMTP:
    """A client for the configured relay, every step under the settings' timeouts."""
    return aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port,
                           timeout=s.smtp_connect_timeout_s,
                           use_tls=s.smtp_security == SmtpSecurity.tls,
                           start_tls=s.smtp_security == SmtpSecurity.starttls,
                           validate_certs=s.smtp_validate_certs,
                           local_hostname=s.smtp_helo_name)


async def relay_reachable(ctx: ServiceContext) -> bool:
    s = ctx.settings
    if s.transport != TransportKind.smtp:
        return True
    client = _client(s)
    try:
        await asyncio.wait_for(client.connect(), s.smtp_connect_timeout_s * 2)
        await client.noop(timeout=s.smtp_timeout_s)
        await client.quit(timeout=s.smtp_timeout_s)
        return True
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()
        return False


def _paused_unreachable(ctx: ServiceContext) -> list[str]:
    with ctx.begin() as conn:
        return pauses.campaigns_with_reason(conn, pauses.SMTP_UNREACHABLE)


def _clear(ctx: ServiceContext, campaigns: list[str]) -> None:
    with ctx.begin() as conn:
        for name in campaigns:
            pauses.remove(conn, name, pauses.SMTP_UNREACHABLE, ctx.clock.now())


async def probe_once(ctx: ServiceContext) -> list[str]:
    """Clear the pause of every campaign waiting on the relay if it answers; return them."""
    waiting = await ctx.in_thread(_paused_unreachable, ctx)
    if not waiting or not await relay_reachable(ctx):
        return []
    await ctx.in_thread(_clear, ctx, waiting)
    log.info("SMTP relay reachable again; resuming %s", ", ".join(waiting),
             extra={"action": "smtp_reachable", "campaigns": len(waiting)})
    return waiting


async def relay_login(ctx: ServiceContext) -> str | None:
    """Connect and AUTH with the running credentials: None if accepted, else the refusal.

    :raises aiosmtplib.SMTPException, OSError, TimeoutError: the relay could not be asked.
    """
    s = ctx.settings
    client = _client(s)
    try:
        await asyncio.wait_for(client.connect(), s.smtp_connect_timeout_s * 2)
        if s.smtp_user and s.smtp_password is not None:
            await client.login(s.smtp_user, s.smtp_password.get_secret_value(),
                               timeout=s.smtp_timeout_s)
        await client.quit(timeout=s.smtp_timeout_s)
        return None
    except aiosmtplib.SMTPAuthenticationError as exc:
        client.close()
        return f"authentication failed: {exc.code}"
    except BaseException:
        client.close()
        raise


def _auth_waiting(ctx: ServiceContext) -> list[str]:
    """Campaigns paused on refused credentials that differ from the running ones."""
    current = relay_auth.credentials_ref(ctx.settings)
    with ctx.begin() as conn:
        return sorted(c for c, ref in relay_auth.waiting(conn).items() if ref != current)


def _auth_outcome(ctx: ServiceContext, campaigns: list[str], refusal: str | None) -> None:
    with ctx.begin() as conn:
        if refusal is not None:
            relay_auth.record_refused(conn, campaigns, ctx.settings, refusal)
            relay_auth.alert(conn, campaigns, ctx.settings, ctx.config, ctx.clock.now(),
                             refusal)
            return
        for name in campaigns:
            pauses.remove(conn, name, pauses.SMTP_AUTH_FAILED, ctx.clock.now())


async def retry_auth_once(ctx: ServiceContext) -> list[str]:
    """With *changed* credentials, try AUTH once; clear the pauses it answers. Same
    credentials: nothing is sent to the relay at all."""
    waiting = await ctx.in_thread(_auth_waiting, ctx)
    if not waiting or ctx.settings.transport != TransportKind.smtp:
        return []
    try:
        refusal = await relay_login(ctx)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return []  # the relay is away: these credentials are still untried
    await ctx.in_thread(_auth_outcome, ctx, waiting, refusal)
    if refusal is not None:
        log.error("SMTP relay refused the new credentials too; %s stay paused",
                  ", ".join(waiting), extra={"action": "smtp_auth_failed"})
        return []
    log.info("SMTP relay accepted the new credentials; resuming %s", ", ".join(waiting),
             extra={"action": "smtp_auth_ok", "campaigns": len(waiting)})
    return waiting


async def relay_probe(ctx: ServiceContext) -> None:
    while not ctx.stopping.is_set():
        try:
            await probe_once(ctx)
            await retry_auth_once(ctx)
        except Exception:  # the loop survives the database being away
            log.exception("relay probe failed", extra={"action": "relay_probe"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stopping.wait(), PROBE_INTERVAL_S)
