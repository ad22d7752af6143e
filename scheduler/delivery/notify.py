"""One-off notifications (guard alerts, post reminders, reports) through the configured transport.

Bulk newsletters use the fast builder in :mod:`scheduler.delivery.message`; notifications are rare,
so the standard library's :class:`email.message.EmailMessage` is plenty here.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses, parseaddr

from scheduler.clock import SystemClock
from scheduler.context import ServiceContext
from scheduler.delivery.base import OutgoingMessage, SendOutcome, Transport
from scheduler.delivery.factory import make_transport
from scheduler.errors import HeaderInjectionError, MartechError

TRANSPORT_KEY = "notify_transport"


def _check_header(name: str, value: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderInjectionError(name)
    return value


def bare_address(value: str) -> str:
    """``"Acme <a@b.example>"`` → ``a@b.example``; raises if there is no usable address."""
    _check_header("address", value)
    _name, addr = parseaddr(value)
    if "@" not in addr:
        raise MartechError(f"not an e-mail address: {value!r}")
    return addr


def build_notification(*, from_: str, to: str | Sequence[str], subject: str, text: str,
                       html: str | None = None, headers: Mapping[str, str] | None = None,
                       now: datetime | None = None) -> OutgoingMessage:
    """A complete text (+ optional HTML) message. Any header value with CR/LF is refused.

    :raises HeaderInjectionError: a header value contains a line break.
    """
    recipients = [to] if isinstance(to, str) else list(to)
    for value in (from_, subject, *recipients):
        _check_header("From/To/Subject", value)
    extra = dict(headers or {})
    for name, value in extra.items():
        _check_header(name, name)
        _check_header(name, value)
    sender = bare_address(from_)
    rcpt = [addr for _n, addr in getaddresses(recipients) if "@" in addr]
    if not rcpt:
        raise MartechError(f"no valid recipient in {recipients!r}")
    domain = sender.rsplit("@", 1)[1]
    message_id = extra.pop("Message-ID", "").strip("<>") or f"{uuid.uuid4().hex}@{domain}"

    msg = EmailMessage(policy=SMTP)
    msg["From"] = from_
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now or SystemClock().now())
    msg["Message-ID"] = f"<{message_id}>"
    for name, value in extra.items():
        msg[name] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return OutgoingMessage(envelope_from=sender, recipients=tuple(rcpt),
                           data=msg.as_bytes(policy=SMTP), message_id=message_id)


def notification_transport(ctx: ServiceContext) -> Transport:
    """The transport notifications share for the life of the context (created on first use)."""
    transport = ctx.extras.get(TRANSPORT_KEY)
    if transport is None:
        transport = make_transport(ctx.settings)
        ctx.extras[TRANSPORT_KEY] = transport
    return transport  # type: ignore[no-any-return]


async def send_notification(ctx: ServiceContext, message: OutgoingMessage) -> SendOutcome:
    """Send one notification; a failure comes back as an outcome, never an exception."""
    try:
        return await notification_transport(ctx).send(message)
    except Exception as exc:  # the caller's retry loop (the outbox) decides what next
        return SendOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")


__all__ = ["bare_address", "build_notification", "send_notification"]
