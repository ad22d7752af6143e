"""The transport contract every end of the pipeline fulfils."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    """A finished RFC 5322 message and its envelope."""

    envelope_from: str  # bare address
    recipients: tuple[str, ...]  # bare addresses
    data: bytes  # the whole message, CRLF line endings
    message_id: str  # without angle brackets
    campaign: str | None = None
    run_id: int | None = None
    delivery_id: int | None = None


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one message. ``permanent`` failures are not retried."""

    ok: bool
    code: int | None = None
    error: str | None = None
    permanent: bool = False
    hard_bounce: bool = False  # 5.1.x: the address does not exist → suppression list
    # The transport could not reach its relay at all (connect/greeting failed): the sender
    # pauses the campaign (smtp_unreachable) instead of burning through the list.
    unreachable: bool = False
    # The relay refused our credentials (535): a reason of its own (smtp_auth_failed), never
    # retried with the same credentials — accounts get locked that way.
    auth_failed: bool = False
    # The end of DATA was written. With no reply read (``code`` None: the link dropped or the
    # reply timed out) the relay may or may not have the message: see ``in_doubt``.
    data_sent: bool = False
    # False: the relay never judged this message (queued behind one whose link dropped, or
    # held back by the sender): back to pending, not counted as an attempt.
    attempted: bool = True

    @property
    def in_doubt(self) -> bool:
        """Accepted or not, nobody knows: ``unknown`` under at_most_once, never retried
        (ARCHITECTURE.md, invariant 3); re-sent with the same Message-ID under at_least_once."""
        return not self.ok and self.data_sent and self.code is None


# Awaited just before a message's content goes out; False means "do not send it" (the
# sender's lease on it is gone). See jobs/newsletter/wire.py.
BeforeData = Callable[[Any], Awaitable[bool]]


class Transport(Protocol):
    name: str

    async def send(self, message: OutgoingMessage) -> SendOutcome:
        """Send one message; never raises for a per-message failure."""
        ...

    async def close(self) -> None:
        ...
