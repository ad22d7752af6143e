"""What an inbound message says: a bounce, a complaint, an unsubscribe request, or nothing.

- RFC 3464 delivery status notifications (``multipart/report; report-type=delivery-status``)
  are read here, per recipient block, for the Action and Status fields the policy needs.
- Anything else that looks like a bounce (qmail, old Exchange, Yahoo's prose…) goes through
  ``flufl.bounce``, GNU Mailman's detectors: they tell temporary from permanent failures but
  carry no status code, so a permanent one is reported as ``5.0.0``.
- RFC 5965 feedback reports (``report-type=feedback-report``): a complaint.
- A message to ``unsubscribe@…`` (our ``mailto:`` List-Unsubscribe): an unsubscribe request,
  with the signed token from its subject or body.

Where a bounce maps back to: every address that may carry a VERP token (the envelope recipients,
Delivered-To / X-Original-To / To, the returned message's Return-Path) is listed in
``bounce_addresses``; the caller verifies them. Nothing here trusts anything.
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from typing import Literal
from urllib.parse import unquote

from flufl.bounce import all_failures

Kind = Literal["bounce", "complaint", "unsubscribe", "other"]
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_TOKEN = re.compile(r"unsubscribe\s+([A-Za-z0-9_.~-]{16,2048})", re.IGNORECASE)
_ADDRESS_HEADERS = ("Delivered-To", "X-Original-To", "X-Envelope-To", "Envelope-To", "To")
# Mailbox full: a 5.2.2 is permanent in form but clears when the owner tidies up (RFC 3463).
_SOFT_PERMANENT = ("5.2.2",)


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient block of a bounce."""

    address: str | None  # Final-Recipient (or Original-Recipient), lower case
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # e.g. 5.1.1
    diagnostic: str = ""

    @property
    def hard(self) -> bool:
        """Permanent: the address must not be mailed again."""
        return (self.action == "failed" and self.status.startswith("5.")
                and self.status not in _SOFT_PERMANENT)

    @property
    def soft(self) -> bool:
        """A failure that may clear (mailbox full, over quota, the relay gave up on a 4xx)."""
        return self.action == "failed" and not self.hard

    def describe(self) -> str:
        text = f"{self.status} {self.diagnostic}".strip()
        return text[:500]


@dataclass(frozen=True)
class Inbound:
    kind: Kind
    source: str  # dsn | flufl | arf | mailto | none
    recipients: tuple[FailedRecipient, ...] = ()
    bounce_addresses: tuple[str, ...] = ()  # may hold a VERP token: verify before use
    unsubscribe_tokens: tuple[str, ...] = ()  # signed tokens found (mailto subject, List-Unsub.)
    feedback_type: str | None = None  # ARF: abuse | fraud | virus | other | not-spam…
    original_message_id: str | None = None
    sender: str | None = None  # the From address of the inbound message itself
    notes: list[str] = field(default_factory=list)


def parse(data: bytes, rcpt_tos: Sequence[str] = ()) -> Inbound:
    """Classify one inbound message; never raises for malformed mail (it is ``other``)."""
    msg = email.message_from_bytes(data, policy=compat32)
    sender = parseaddr(str(msg.get("From", "")))[1].lower() or None
    addresses = _candidate_addresses(msg, rcpt_tos)
    report_type = (msg.get_param("report-type", header="content-type") or "")
    report_type = str(report_type).lower()
    if msg.get_content_type() == "multipart/report" and report_type == "feedback-report":
        return _arf(msg, addresses, sender)
    if msg.get_content_type() == "multipart/report" and report_type == "delivery-status":
        dsn = _dsn(msg, addresses, sender)
        if dsn is not None:
            return dsn
    if _to_unsubscribe(rcpt_tos, msg):
        tokens = _tokens(str(msg.get("Subject", "")), _text_of(msg))
        return Inbound("unsubscribe", "mailto", unsubscribe_tokens=tokens, sender=sender)
    return _flufl(msg, addresses, sender)


def _candidate_addresses(msg: Message, rcpt_tos: Iterable[str]) -> list[str]:
    found = [a.strip().strip("<>") for a in rcpt_tos]
    for name in _ADDRESS_HEADERS:
        found += [addr for _n, addr in getaddresses([str(v) for v in msg.get_all(name, [])])]
    return [a for a in dict.fromkeys(a.strip() for a in found) if "@" in a]


def _original(msg: Message) -> Message | None:
    """The returned message (or its headers) inside a report."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                inner = payload[0]
                return inner if isinstance(inner, Message) else None
        if ctype == "text/rfc822-headers":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return BytesHeaderParser(policy=compat32).parsebytes(raw)
    return None


def _original_facts(msg: Message) -> tuple[list[str], list[str], str | None]:
    """From the returned message: VERP candidates, unsubscribe tokens, Message-ID."""
    original = _original(msg)
    if original is None:
        return [], [], None
    addresses = [parseaddr(str(v))[1] for v in original.get_all("Return-Path", [])]
    unsub = " ".join(str(v) for v in original.get_all("List-Unsubscribe", []))
    tokens = re.findall(r"/unsubscribe/([A-Za-z0-9_.~-]{16,2048})", unsub)
    tokens += [t for t in _tokens(unquote(unsub), "") if t not in tokens]
    message_id = str(original.get("Message-ID", "")).strip().strip("<>") or None
    return [a for a in addresses if a], tokens, message_id


def _dsn(msg: Message, addresses: list[str], sender: str | None) -> Inbound | None:
    recipients: list[FailedRecipient] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            continue
        for block in blocks[1:]:  # the first block holds the per-message fields
            if not isinstance(block, Message):
                continue
            recipients.append(_recipient_block(block))
    if not recipients:
        return None
    returned, tokens, message_id = _original_facts(msg)
    return Inbound("bounce", "dsn", tuple(recipients), tuple(addresses + returned),
                   tuple(tokens), original_message_id=message_id, sender=sender)


def _recipient_block(block: Message) -> FailedRecipient:
    address = None
    for name in ("Original-Recipient", "Final-Recipient"):
        value = str(block.get(name, ""))
        kind, sep, addr = value.partition(";")
        if sep and kind.strip().lower() == "rfc822" and "@" in addr:
            address = addr.strip().strip("<>").lower()
            break
    action = str(block.get("Action", "")).strip().lower().split(" ")[0]
    if action == "error":  # OpenSMTPD's non-standard spelling
        action = "failed"
    status_match = _STATUS.search(str(block.get("Status", "")))
    diagnostic = " ".join(str(block.get("Diagnostic-Code", "")).split())
    if status_match is None:
        status_match = _STATUS.search(diagnostic)
    status = status_match.group(0) if status_match else ("5.0.0" if action == "failed"
                                                         else "4.0.0")
    return FailedRecipient(address, action, status, diagnostic.partition(";")[2].strip()
                           or diagnostic)


def _arf(msg: Message, addresses: list[str], sender: str | None) -> Inbound:
    feedback_type = None
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            block = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(block, Message):
                feedback_type = str(block.get("Feedback-Type", "")).strip().lower() or None
            break
    returned, tokens, message_id = _original_facts(msg)
    return Inbound("complaint", "arf", (), tuple(addresses + returned), tuple(tokens),
                   feedback_type=feedback_type, original_message_id=message_id, sender=sender)


def _flufl(msg: Message, addresses: list[str], sender: str | None) -> Inbound:
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # a detector choking on odd mail must not lose the message
        return Inbound("other", "none", sender=sender, notes=[f"detector failed: {exc!r}"])
    recipients = [FailedRecipient(a.decode("ascii", "replace").lower(), "failed", "5.0.0",
                                  "permanent failure (non-standard bounce)")
                  for a in sorted(permanent)]
    recipients += [FailedRecipient(a.decode("ascii", "replace").lower(), "failed", "4.0.0",
                                   "temporary failure (non-standard bounce)")
                   for a in sorted(temporary - permanent)]
    if not recipients:
        return Inbound("other", "none", sender=sender)
    returned, tokens, message_id = _original_facts(msg)
    return Inbound("bounce", "flufl", tuple(recipients), tuple(addresses + returned),
                   tuple(tokens), original_message_id=message_id, sender=sender)


def _to_unsubscribe(rcpt_tos: Sequence[str], msg: Message) -> bool:
    to = [a for _n, a in getaddresses([str(v) for v in msg.get_all("To", [])])]
    return any(a.strip().strip("<>").lower().partition("@")[0] == "unsubscribe"
               for a in [*rcpt_tos, *to])


def _tokens(subject: str, body: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_TOKEN.findall(subject) + _TOKEN.findall(body[:20_000])))


def _text_of(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                return raw.decode(part.get_content_charset() or "utf-8", "replace")
    return ""
