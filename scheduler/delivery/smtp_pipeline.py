"""SMTP PIPELINING (RFC 2920) for bulk sends over a connection aiosmtplib has set up.

aiosmtplib connects, says EHLO, does STARTTLS and AUTH; when the relay advertises PIPELINING we
take over its transport with this small protocol. RFC 2920 lets the message content be the
first "command" of a group, so in steady state one write carries message *i*'s content and end
of data plus message *i+1*'s MAIL, RCPT and DATA, and one wait collects their replies: one round
trip per message instead of four. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from scheduler.delivery.base import BeforeData, OutgoingMessage, SendOutcome

J = TypeVar("J")
MAX_REPLY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Reply:
    code: int
    text: str


class ConnectionLost(Exception):
    """The relay closed the link, or a reply did not arrive in time."""


class PipeProtocol(asyncio.Protocol):
    """Collects complete (possibly multi-line) replies in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._partial: list[bytes] = []
        self.replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._want = 0
        self.lost: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end + 1]).rstrip(b"\r\n")
            del self._buffer[:end + 1]
            self._partial.append(line[4:])
            if line[3:4] != b"-":
                try:
                    code = int(line[:3])
                except ValueError:
                    code = 0
                text = b"\n".join(self._partial).decode("utf-8", "replace")
                self._partial = []
                self.replies.append(Reply(code, text))
        if len(self._buffer) > MAX_REPLY_BYTES:
            self.connection_lost(ConnectionLost("reply too long"))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionLost("connection closed by the relay")
        self.transport = None
        self._wake()

    def eof_received(self) -> bool:
        self.connection_lost(ConnectionLost("connection closed by the relay"))
        return False

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done() and (
                len(self.replies) >= self._want or self.lost is not None):
            self._waiter.set_result(None)

    async def read(self, count: int, timeout_s: float) -> list[Reply]:
        if len(self.replies) < count:
            if self.lost is not None:
                raise ConnectionLost(str(self.lost))
            self._want = count
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError as exc:
                raise ConnectionLost(f"no reply within {timeout_s:g}s") from exc
            finally:
                self._waiter = None
            if len(self.replies) < count:
                raise ConnectionLost(str(self.lost))
        return [self.replies.popleft() for _ in range(count)]

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionLost(str(self.lost or "connection closed"))
        self.transport.write(data)


def envelope(message: OutgoingMessage) -> bytes:
    parts = [b"MAIL FROM:<", message.envelope_from.encode("ascii"), b">\r\n"]
    for rcpt in message.recipients:
        parts += [b"RCPT TO:<", rcpt.encode("ascii"), b">\r\n"]
    parts.append(b"DATA\r\n")
    return b"".join(parts)


def dot_stuffed(data: bytes) -> bytes:
    """Content plus end-of-data; a line starting with '.' gets another (RFC 5321 4.5.2)."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


@dataclass
class _Item(Generic[J]):
    job: J
    message: OutgoingMessage


Classify = Callable[[int, str], SendOutcome]


async def pipeline(proto: PipeProtocol, jobs: Iterator[J],
                   build: Callable[[J], OutgoingMessage | SendOutcome],
                   done: Callable[[J, SendOutcome], None], *, timeout_s: float,
                   classify: Classify, before_data: BeforeData | None = None) -> None:
    """Send jobs pulled from the shared iterator until it is empty or the link fails.

    ``before_data(job)`` is awaited between the relay's 354 and the content: it returns once
    the ledger knows the message may cross (False: do not send it — the link is dropped, so
    the relay discards the open transaction instead of delivering an empty message).

    :raises ConnectionLost: after reporting the in-flight job(s) as transient failures; the
        one whose end of data was written (``data_sent``) is in doubt.
    """
    def next_item() -> _Item[J] | None:
        for job in jobs:
            built = build(job)
            if isinstance(built, SendOutcome):
                done(job, built)  # could not be built (template/header problem)
                continue
            return _Item(job, built)
        return None

    current = next_item()
    if current is None:
        return
    nxt: _Item[J] | None = None
    written = False  # current's end of data is on the wire
    refused_by_gate = False
    try:
        proto.write(envelope(current.message))
        while current is not None:
            replies = await proto.read(2 + len(current.message.recipients), timeout_s)
            mail, rcpts, data = replies[0], replies[1:-1], replies[-1]
            refused = next((r for r in (mail, *rcpts) if r.code not in (250, 251)), None)
            nxt = next_item()
            tail = envelope(nxt.message) if nxt is not None else b""
            if data.code == 354 and refused is None:
                if before_data is not None and not await before_data(current.job):
                    refused_by_gate = True
                    raise ConnectionLost("not sent: the sender's lease on it was lost")
                proto.write(dot_stuffed(current.message.data) + tail)
                written = True
                end = await proto.read(1, timeout_s)
                outcome = (SendOutcome(ok=True, code=250, data_sent=True)
                           if end[0].code == 250 else classify(end[0].code, end[0].text))
            elif data.code == 354 and refused is not None:  # end an empty DATA, reset
                proto.write(b".\r\nRSET\r\n" + tail)
                await proto.read(2, timeout_s)
                outcome = classify(refused.code, refused.text)
            else:
                proto.write(b"RSET\r\n" + tail)
                await proto.read(1, timeout_s)
                bad = refused or data
                outcome = classify(bad.code, bad.text)
            done(current.job, outcome)
            current, nxt, written = nxt, None, False
    except ConnectionLost as exc:
        # Before its end of data was written the in-flight message was certainly not
        # accepted: a plain retry. After it, nobody knows (``data_sent``): the ledger's
        # policy decides. The prefetched one was never sent.
        error = f"connection lost: {exc}"[:500]
        if current is not None:
            done(current.job, SendOutcome(ok=False, error=error, data_sent=written,
                                          attempted=not refused_by_gate))
        if nxt is not None:
            done(nxt.job, SendOutcome(ok=False, error=error, attempted=False))
        raise
