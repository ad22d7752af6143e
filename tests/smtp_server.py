"""A real aiosmtpd server on 127.0.0.1 port 0 with a recording, fault-injecting handler.

Reusable by any test that sends mail::

    with SmtpServer() as server:          # or: server = SmtpServer().start(); server.stop()
        ... send to ("127.0.0.1", server.port) ...
        assert server.count("a@example.com") == 1

Faults are keyed by recipient address (lower case): ``"4xx"`` (451 on RCPT), ``"5xx"`` (550 on
RCPT), ``"hard"`` (550 5.1.1 on RCPT), ``"disconnect"`` (drop the link after the end of DATA,
before storing or replying: the client cannot know whether the message was accepted),
``"store_drop"`` (store the message, then drop the link before replying), ``"drop_rcpt"`` (drop
the link at RCPT: before any data), ``"slow"`` (delay the DATA reply by ``slow_s``, then store).
``fault_once`` faults apply only to the first attempt for that recipient. ``data_delay_s``
delays every DATA reply (a relay that takes its time: batches stay in flight for a while).
"""

from __future__ import annotations

import asyncio
import email
import threading
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPServerProtocol
from aiosmtpd.smtp import Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=default_policy)  # type: ignore[return-value]


@dataclass
class RecordingHandler:
    faults: dict[str, str] = field(default_factory=dict)
    fault_once: dict[str, str] = field(default_factory=dict)
    slow_s: float = 5.0
    data_delay_s: float = 0.0
    pipelining: bool = True  # advertise PIPELINING (aiosmtpd reads commands in order anyway)
    received: list[Received] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, address: str) -> str | None:
        key = address.lower()
        if key in self.fault_once and self.attempts[key] == 1:
            return self.fault_once[key]
        return self.faults.get(key)

    async def handle_EHLO(self, server: Any, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        with self.lock:
            self.attempts[address.lower()] += 1
        fault = self._fault(address)
        if fault == "drop_rcpt":
            server.transport.abort()
            return "451 dropped"
        if fault == "4xx":
            return "451 4.3.0 try again later"
        if fault == "5xx":
            return "554 5.7.1 rejected by policy"
        if fault == "hard":
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        faults = {self._fault(r) for r in envelope.rcpt_tos}
        if "disconnect" in faults:
            server.transport.abort()
            return "451 dropped"
        if "slow" in faults:
            await asyncio.sleep(self.slow_s)
        if self.data_delay_s:
            await asyncio.sleep(self.data_delay_s)
        data = envelope.original_content or b""
        with self.lock:
            self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                          data))
        if "store_drop" in faults:
            server.transport.abort()
            return "451 dropped"
        return "250 2.0.0 queued"


class SmtpServer:
    """aiosmtpd in a background thread with its own event loop, bound to port 0."""

    def __init__(self, handler: RecordingHandler | None = None, *,
                 ssl_context: Any = None, **smtp_kwargs: Any) -> None:
        """``ssl_context``: implicit TLS on connect; ``smtp_kwargs`` go to aiosmtpd's ``SMTP``
        (e.g. ``tls_context`` + ``require_starttls`` for STARTTLS, ``authenticator``)."""
        self.handler = handler or RecordingHandler()
        self.ssl_context = ssl_context
        self.smtp_kwargs = smtp_kwargs
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> SmtpServer:
        self._thread.start()

        async def _serve() -> asyncio.AbstractServer:
            return await self._loop.create_server(
                lambda: SMTPServerProtocol(self.handler, enable_SMTPUTF8=True,
                                           data_size_limit=None, timeout=30,
                                           **self.smtp_kwargs),
                "127.0.0.1", 0, ssl=self.ssl_context)

        self._server = asyncio.run_coroutine_threadsafe(_serve(), self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def _close() -> None:
                server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what arrived ------------------------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def per_recipient(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for item in self.received:
            for rcpt in item.rcpt_tos:
                counts[rcpt.lower()] += 1
        return counts

    def count(self, address: str) -> int:
        return self.per_recipient()[address.lower()]
