"""Poll an IMAP mailbox for bounces and reports (``aioimaplib``), for setups whose bounces land
in a mailbox rather than at our SMTP endpoint.

Each poll reads the UNSEEN messages of one folder (``BODY.PEEK[]``, so reading alone marks
nothing), hands each to the handler, and only then flags it ``\\Seen``: a crash between the two
re-reads the message next time, which the idempotent handler shrugs off. A refused login stops
the poller until the service restarts (with new settings): retrying the same bad password is how
mail accounts get locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aioimaplib

from scheduler.errors import MartechError
from scheduler.settings import ImapSecurity, Settings

log = logging.getLogger("martech.inbound")

Handle = Callable[[str, list[str], bytes], Awaitable[Any]]
MAX_PER_POLL = 500  # a huge backlog is worked through over several polls


class ImapLoginRefused(MartechError):
    """The IMAP server refused the configured credentials."""

    def __init__(self, host: str, user: str, reply: str) -> None:
        self.host = host
        self.user = user
        super().__init__(f"IMAP login to {host} as {user!r} refused: {reply[:200]}")


class ImapError(MartechError):
    """An IMAP command failed (not the login)."""


@dataclass(frozen=True)
class ImapOptions:
    host: str
    port: int
    user: str
    password: str
    folder: str = "INBOX"
    security: ImapSecurity = ImapSecurity.tls
    validate_certs: bool = True
    timeout_s: float = 30.0
    poll_s: float = 60.0

    def __repr__(self) -> str:  # never print the password
        return f"ImapOptions(host={self.host!r}, port={self.port}, user={self.user!r})"

    @classmethod
    def from_settings(cls, s: Settings) -> ImapOptions:
        if not s.imap_host or not s.imap_user or s.imap_password is None:
            raise MartechError("MARTECH_IMAP_HOST needs MARTECH_IMAP_USER and "
                               "MARTECH_IMAP_PASSWORD")
        return cls(s.imap_host, s.imap_port, s.imap_user, s.imap_password.get_secret_value(),
                   s.imap_folder, s.imap_security, s.imap_validate_certs, s.imap_timeout_s,
                   s.imap_poll_s)


def _client(options: ImapOptions) -> aioimaplib.IMAP4:
    if options.security == ImapSecurity.none:
        return aioimaplib.IMAP4(options.host, options.port, timeout=options.timeout_s)
    context = ssl.create_default_context()
    if not options.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return aioimaplib.IMAP4_SSL(options.host, options.port, timeout=options.timeout_s,
                                ssl_context=context)


def _check(response: Any, what: str) -> Any:
    if response.result != "OK":
        raise ImapError(f"IMAP {what} failed: {response.result} "
                        f"{b' '.join(bytes(x) for x in response.lines[-1:])!r}")
    return response


def _literal(response: Any) -> bytes | None:
    """The message bytes of a one-message FETCH response (the literal line)."""
    for line in response.lines:
        if isinstance(line, bytearray):
            return bytes(line)
    return None


async def poll_once(options: ImapOptions, handle: Handle) -> int:
    """Process the folder's unseen messages; return how many were handled."""
    client = _client(options)
    await client.wait_hello_from_server()
    try:
        login = await client.login(options.user, options.password)
        if login.result != "OK":
            reply = b" ".join(bytes(x) for x in login.lines).decode("utf-8", "replace")
            raise ImapLoginRefused(options.host, options.user, reply)
        _check(await client.select(options.folder), f"SELECT {options.folder}")
        found = _check(await client.uid_search("UNSEEN", charset=None), "UID SEARCH UNSEEN")
        uids = [u for u in bytes(found.lines[0]).decode("ascii").split() if u.isdigit()]
        for uid in uids[:MAX_PER_POLL]:
            fetched = _check(await client.uid("fetch", uid, "(BODY.PEEK[])"), "UID FETCH")
            data = _literal(fetched)
            if data is not None:
                await handle("", [], data)
            _check(await client.uid("store", uid, "+FLAGS", "(\\Seen)"), "UID STORE")
        return min(len(uids), MAX_PER_POLL)
    finally:
        with contextlib.suppress(Exception):  # the server may already have hung up
            await client.logout()


async def poll_forever(options: ImapOptions, handle: Handle, stopping: asyncio.Event) -> None:
    """Poll every ``options.poll_s`` until ``stopping``; survive outages, stop on bad login."""
    while not stopping.is_set():
        try:
            count = await poll_once(options, handle)
            if count:
                log.info("IMAP poll handled %d message(s)", count,
                         extra={"action": "imap_poll", "count": count})
        except ImapLoginRefused as exc:
            log.error("%s; the mailbox poller stops until the settings are fixed and the "
                      "service restarted", exc, extra={"action": "imap_login_refused"})
            return
        except (OSError, TimeoutError, ImapError, aioimaplib.AioImapException) as exc:
            log.warning("IMAP poll failed (%s: %s); retrying in %.0fs", type(exc).__name__, exc,
                        options.poll_s, extra={"action": "imap_poll_failed"})
        except Exception:  # e.g. the database is away while handling: unseen, so retried
            log.exception("IMAP poll failed; retrying in %.0fs", options.poll_s,
                          extra={"action": "imap_poll_failed"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), options.poll_s)
