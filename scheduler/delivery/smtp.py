"""SMTP through aiosmtplib: a pool of persistent connections, a timeout on every step.

Errors are classified for the ledger: 4xx replies and dropped connections are transient (retried
with backoff), 5xx replies are permanent, and 5.1.x (bad mailbox) is a hard bounce that puts the
address on the suppression list. A link lost (or a reply timed out) after the end of DATA was
written is neither: the outcome says ``data_sent`` with no code, and the ledger's delivery policy
decides (ARCHITECTURE.md, invariant 3). A failure to connect at all is flagged ``unreachable``
so the sender can pause the campaign instead of failing every recipient.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import aiosmtplib

from scheduler.delivery.base import BeforeData, OutgoingMessage, SendOutcome
from scheduler.delivery.smtp_pipeline import ConnectionLost, PipeProtocol, dot_stuffed, pipeline
from scheduler.settings import Settings, SmtpSecurity

J = TypeVar("J")
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class SmtpOptions:
    host: str
    port: int
    security: SmtpSecurity = SmtpSecurity.none
    user: str | None = None
    password: str | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    validate_certs: bool = True
    helo_name: str | None = None

    def __repr__(self) -> str:  # never print the password
        return f"SmtpOptions(host={self.host!r}, port={self.port}, security={self.security})"


def classify(code: int | None, text: str) -> SendOutcome:
    """An SMTP error reply as an outcome: 5xx permanent, 5.1.x a hard bounce, else transient."""
    permanent = code is not None and 500 <= code < 600
    enhanced = _ENHANCED.search(text or "")
    hard = permanent and enhanced is not None and enhanced.group(1) == "5" \
        and enhanced.group(2) == "1"
    return SendOutcome(ok=False, code=code, error=f"{code} {text}".strip()[:500],
                       permanent=permanent, hard_bounce=hard)


class SmtpTransport:
    name = "smtp"

    def __init__(self, options: SmtpOptions, *, connections: int = 1,
                 pipelining: bool = True) -> None:
        self.options = options
        self.size = max(1, connections)
        self.pipelining = pipelining
        self._pipes: dict[int, PipeProtocol] = {}
        self._idle: asyncio.Queue[aiosmtplib.SMTP] | None = None
        self._all: list[aiosmtplib.SMTP] = []

    @classmethod
    def from_settings(cls, settings: Settings, *, connections: int = 1) -> SmtpTransport:
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return cls(SmtpOptions(
            host=settings.smtp_host, port=settings.smtp_port, security=settings.smtp_security,
            user=settings.smtp_user, password=password, timeout_s=settings.smtp_timeout_s,
            connect_timeout_s=settings.smtp_connect_timeout_s,
            validate_certs=settings.smtp_validate_certs, helo_name=settings.smtp_helo_name,
        ), connections=connections)

    def _pool(self) -> asyncio.Queue[aiosmtplib.SMTP]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self.size):
                client = self._client()
                self._all.append(client)
                self._idle.put_nowait(client)
        return self._idle

    def _client(self) -> aiosmtplib.SMTP:
        opts = self.options
        return aiosmtplib.SMTP(
            hostname=opts.host, port=opts.port, timeout=opts.timeout_s,
            use_tls=opts.security == SmtpSecurity.tls,
            start_tls=opts.security == SmtpSecurity.starttls,
            validate_certs=opts.validate_certs, local_hostname=opts.helo_name,
        )

    async def _ensure_connected(self, client: aiosmtplib.SMTP) -> SendOutcome | None:
        if client.is_connected:
            return None
        opts = self.options
        try:
            await asyncio.wait_for(client.connect(timeout=opts.connect_timeout_s),
                                   opts.connect_timeout_s * 2)
            if client.last_ehlo_response is None and client.last_helo_response is None:
                await client.ehlo(timeout=opts.timeout_s)
            if opts.user and opts.password is not None:
                await client.login(opts.user, opts.password, timeout=opts.timeout_s)
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            return SendOutcome(ok=False, code=exc.code, error=f"authentication failed: "
                               f"{exc.code}", unreachable=True, auth_failed=True)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            return SendOutcome(ok=False, error=f"cannot connect to {opts.host}:{opts.port}: "
                               f"{type(exc).__name__}: {exc}"[:500], unreachable=True)
        return None

    async def send(self, message: OutgoingMessage) -> SendOutcome:
        outcomes: list[SendOutcome] = []
        await self.send_all(iter([message]), lambda m: m, lambda _m, out: outcomes.append(out),
                            workers=1)
        return outcomes[0]

    async def send_all(self, jobs: Iterator[J], build: Callable[[J], OutgoingMessage | SendOutcome],
                       done: Callable[[J, SendOutcome], None], *, workers: int | None = None,
                       before_data: BeforeData | None = None) -> None:
        """Send every job of the shared iterator over the pool; ``done`` gets each outcome.

        Each connection pulls the next job when it is free, so a slow link never holds up the
        others. Jobs left when no connection can be opened get an ``unreachable`` outcome.
        ``before_data(job)`` is awaited just before a message's content is written (see
        ``smtp_pipeline.pipeline``); when it says False the message is not sent.
        """
        pool = self._pool()

        async def worker() -> SendOutcome | None:
            client = await pool.get()
            try:
                return await self._work(client, jobs, build, done, before_data)
            finally:
                pool.put_nowait(client)

        count = min(workers or self.size, self.size)
        results = await asyncio.gather(*(worker() for _ in range(count)))
        failure = next((r for r in results if r is not None), None)
        if failure is not None:
            for job in jobs:  # nobody could connect: hand the rest back untouched
                done(job, failure)

    async def _work(self, client: aiosmtplib.SMTP, jobs: Iterator[J],
                    build: Callable[[J], OutgoingMessage | SendOutcome],
                    done: Callable[[J, SendOutcome], None],
                    before_data: BeforeData | None) -> SendOutcome | None:
        while True:
            failed = await self._ensure_connected(client)
            if failed is not None:
                return failed
            pipe = self._pipe_for(client)
            if pipe is not None:
                try:
                    await pipeline(pipe, jobs, build, done, timeout_s=self.options.timeout_s,
                                   classify=classify, before_data=before_data)
                    return None
                except ConnectionLost:
                    self._drop(client)
                    continue  # reconnect and carry on with the next jobs
            for job in jobs:
                built = build(job)
                if isinstance(built, SendOutcome):
                    done(job, built)
                    continue
                gate = None if before_data is None else functools.partial(before_data, job)
                done(job, await self._send_on(client, built, gate))
                if not client.is_connected:
                    break
            else:
                return None

    def _pipe_for(self, client: aiosmtplib.SMTP) -> PipeProtocol | None:
        """The pipelining protocol on this connection, taking it over from aiosmtplib once."""
        pipe = self._pipes.get(id(client))
        if pipe is not None:
            return pipe
        if not self.pipelining or "pipelining" not in client.esmtp_extensions:
            return None
        transport = client.transport
        if transport is None:
            return None
        pipe = PipeProtocol()
        pipe.transport = transport  # type: ignore[assignment]
        transport.set_protocol(pipe)
        self._pipes[id(client)] = pipe
        return pipe

    def _drop(self, client: aiosmtplib.SMTP) -> None:
        pipe = self._pipes.pop(id(client), None)
        if pipe is not None and pipe.transport is not None:
            pipe.transport.close()
        client.close()

    async def _send_on(self, client: aiosmtplib.SMTP, message: OutgoingMessage,
                       gate: Callable[[], Awaitable[bool]] | None = None) -> SendOutcome:
        """One MAIL/RCPT/DATA transaction with the timeout on every step.

        ``sendmail`` would re-parse both addresses with ``email.utils`` for every message
        (~200 µs); ours were validated when the ledger was materialised, so the commands are
        issued directly. DATA and the content are two steps (aiosmtplib's ``data()`` is one),
        so that ``gate`` runs between them and the outcome knows whether the end of data was
        written when the link fails.
        """
        timeout = self.options.timeout_s
        written = False
        try:
            reply = await client.execute_command(
                b"MAIL", b"FROM:<" + message.envelope_from.encode("ascii") + b">",
                timeout=timeout)
            if reply.code != 250:
                return await self._refused(client, reply.code, reply.message)
            for rcpt in message.recipients:
                reply = await client.execute_command(
                    b"RCPT", b"TO:<" + rcpt.encode("ascii") + b">", timeout=timeout)
                if reply.code not in (250, 251):
                    return await self._refused(client, reply.code, reply.message)
            reply = await client.execute_command(b"DATA", timeout=timeout)
            if reply.code != 354:
                return await self._refused(client, reply.code, reply.message)
            if gate is not None and not await gate():
                client.close()  # the relay discards the open transaction
                return SendOutcome(ok=False, error="not sent: the sender's lease on it was lost",
                                   attempted=False)
            protocol = client.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost")
            protocol.write(dot_stuffed(message.data))
            written = True
            end = await protocol.read_response(timeout=timeout)
            if end.code != 250:
                return classify(end.code, end.message)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, TimeoutError,
                ConnectionError, OSError) as exc:
            client.close()  # a half-finished transaction: start the next one on a fresh link
            return SendOutcome(ok=False, error=f"connection lost: {type(exc).__name__}: "
                               f"{exc}"[:500], data_sent=written)
        except aiosmtplib.SMTPResponseException as exc:
            return await self._refused(client, exc.code, exc.message)
        except (aiosmtplib.SMTPException, ValueError, UnicodeEncodeError) as exc:
            client.close()
            return SendOutcome(ok=False, error=f"{type(exc).__name__}: {exc}"[:500],
                               data_sent=written)
        return SendOutcome(ok=True, code=250, data_sent=True)

    async def _refused(self, client: aiosmtplib.SMTP, code: int, text: str) -> SendOutcome:
        """Classify a refusal, then reset the envelope so the connection stays usable."""
        if code == 421 or not client.is_connected:
            client.close()
        else:
            try:
                await client.rset(timeout=self.options.timeout_s)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        return classify(code, text)

    async def close(self) -> None:
        for client in self._all:
            pipe = self._pipes.get(id(client))
            if pipe is not None:
                try:
                    pipe.write(b"QUIT\r\n")
                    await pipe.read(1, self.options.timeout_s)
                except ConnectionLost:
                    pass
                self._drop(client)
            elif client.is_connected:
                try:
                    await asyncio.wait_for(client.quit(), self.options.timeout_s)
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()
        self._all.clear()
        self._idle = None
