"""The inbound SMTP endpoint: aiosmtpd on the service's own event loop.

Relays deliver bounces, feedback reports and ``mailto:`` unsubscribes here (point the bounce
domain's MX, or a transport map, at it). It is no relay: RCPT TO is accepted only for the
addresses ``accepts`` names, and a message is acknowledged (250) only after ``handle`` has
committed its effects; a failure there answers 451 so the sending MTA retries later — nothing
is lost and nothing is applied twice (the handler is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("martech.inbound")

Accepts = Callable[[str], bool]
Handle = Callable[[str, list[str], bytes], Awaitable[Any]]


@dataclass(frozen=True)
class InboundOptions:
    host: str
    port: int
    max_message_bytes: int
    hostname: str


class _Handler:
    def __init__(self, accepts: Accepts, handle: Handle) -> None:
        self.accepts = accepts
        self.handle = handle

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.accepts(address):
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        try:
            await self.handle(str(envelope.mail_from or ""), list(envelope.rcpt_tos), data)
        except Exception:  # the database is away: the sender keeps the message and retries
            log.exception("inbound message not processed; answered 451",
                          extra={"action": "inbound_tempfail"})
            return "451 4.3.0 cannot process the message now; try again later"
        return "250 2.0.0 accepted"


async def start(options: InboundOptions, accepts: Accepts, handle: Handle
                ) -> asyncio.AbstractServer:
    """Listen on ``options.host:options.port`` (0 picks a free port); returns the server."""
    handler = _Handler(accepts, handle)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=options.max_message_bytes,
                     hostname=options.hostname, ident="martech inbound",
                     enable_SMTPUTF8=True, timeout=60),
        options.host, options.port)
    return server


def bound_port(server: asyncio.AbstractServer) -> int:
    sockets = server.sockets  # type: ignore[attr-defined]
    return int(sockets[0].getsockname()[1]) if sockets else 0


async def serve(options: InboundOptions, accepts: Accepts, handle: Handle,
                stopping: asyncio.Event) -> None:
    """Run the endpoint until ``stopping`` is set."""
    server = await start(options, accepts, handle)
    log.info("inbound SMTP listening on %s:%d", options.host, bound_port(server),
             extra={"action": "inbound_listen", "port": bound_port(server)})
    try:
        await stopping.wait()
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):  # open sessions end on their own timeout
            await asyncio.wait_for(server.wait_closed(), 5)
