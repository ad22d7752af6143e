"""Real bounce and complaint messages: RFC 3464 DSNs and RFC 5965 ARF reports built here, plus
vendor-style samples (Postfix, qmail's QSBMF, a Yahoo/AOL-style feedback loop report).

Each takes the message we actually sent (bytes as the relay received it), so the returned
headers carry our real Message-ID, List-Unsubscribe and — where a final MTA adds it — the
Return-Path holding the VERP token.
"""

from __future__ import annotations

import email
from email.policy import compat32

CRLF = "\r\n"


def headers_of(sent: bytes) -> str:
    """The header block of the message we sent, as the report quotes it (unfolded CRLF)."""
    return sent.split(b"\r\n\r\n", 1)[0].decode("ascii") + CRLF


def _join(lines: list[str]) -> bytes:
    return CRLF.join(lines).encode("utf-8")


def dsn(*, to: str, recipient: str, sent: bytes, status: str = "5.1.1",
        action: str = "failed", diagnostic: str = "smtp; 550 5.1.1 User unknown",
        mta: str = "mx.example.com", extra_headers: tuple[str, ...] = ()) -> bytes:
    """An RFC 3464 report as Postfix writes it (text/rfc822-headers of the original)."""
    boundary = "dsn-boundary-1"
    return _join([
        *extra_headers,
        "From: MAILER-DAEMON@relay.acme.example (Mail Delivery System)",
        f"To: {to}",
        "Subject: Undelivered Mail Returned to Sender",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "This is the mail system at host relay.acme.example.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
        "",
        f"<{recipient}>: host {mta} said: {diagnostic.partition('; ')[2]}",
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; relay.acme.example",
        "X-Postfix-Queue-ID: 4F1C2A0B3D",
        "Arrival-Date: Mon, 23 Nov 2026 09:00:01 +0000 (UTC)",
        "",
        f"Final-Recipient: rfc822; {recipient}",
        f"Original-Recipient: rfc822;{recipient}",
        f"Action: {action}",
        f"Status: {status}",
        f"Remote-MTA: dns; {mta}",
        f"Diagnostic-Code: {diagnostic}",
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
        headers_of(sent).rstrip(CRLF),
        "",
        f"--{boundary}--",
        "",
    ])


def qmail_bounce(*, to: str, recipient: str, extra_headers: tuple[str, ...] = ()) -> bytes:
    """qmail's QSBMF: no DSN at all — only flufl.bounce's qmail detector understands it."""
    return _join([
        *extra_headers,
        "From: MAILER-DAEMON@mx.oldhost.example",
        f"To: {to}",
        "Subject: failure notice",
        "",
        "Hi. This is the qmail-send program at mx.oldhost.example.",
        "I'm afraid I wasn't able to deliver your message to the following addresses.",
        "This is a permanent error; I've given up. Sorry it didn't work out.",
        "",
        f"<{recipient}>:",
        "Sorry, no mailbox here by that name. (#5.1.1)",
        "",
        "--- Below this line is a copy of the message.",
        "",
        "Subject: hello",
        "",
    ])


def arf(*, to: str, sent: bytes, feedback_type: str = "abuse", return_path: str | None = None,
        redact_to: bool = True, extra_headers: tuple[str, ...] = ()) -> bytes:
    """An RFC 5965 report in the style of Yahoo's and AOL's feedback loops: the original as
    message/rfc822 with the final MTA's Return-Path on top, the recipient redacted."""
    original = sent
    if redact_to:
        parsed = email.message_from_bytes(sent, policy=compat32)
        rcpt = str(parsed["To"])
        original = sent.replace(f"To: {rcpt}".encode(), b"To: redacted@example.net", 1)
    if return_path is not None:
        original = f"Return-Path: <{return_path}>\r\n".encode() + original
    boundary = "arf-boundary-7"
    return _join([
        *extra_headers,
        "From: feedback@arf.mail.example.net",
        f"To: {to}",
        "Subject: Email Feedback Report for IP 192.0.2.1",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "This is an email abuse report for an email message received from IP 192.0.2.1.",
        "",
        f"--{boundary}",
        "Content-Type: message/feedback-report",
        "",
        f"Feedback-Type: {feedback_type}",
        "User-Agent: SomeGenerator/1.0",
        "Version: 1",
        "Original-Mail-From: <news@acme.example>",
        "Arrival-Date: Mon, 23 Nov 2026 09:01:00 +0000",
        "Reported-Domain: acme.example",
        "",
        f"--{boundary}",
        "Content-Type: message/rfc822",
        "Content-Disposition: inline",
        "",
        "",  # the blank line between the part's headers and the quoted message
    ]) + original + _join(["", f"--{boundary}--", ""])


def mailto_unsubscribe(*, to: str, sender: str, subject: str) -> bytes:
    """What a mail client sends for our ``mailto:`` List-Unsubscribe entry."""
    return _join([f"From: {sender}", f"To: {to}", f"Subject: {subject}", "MIME-Version: 1.0",
                  "Content-Type: text/plain; charset=utf-8", "", "Please unsubscribe me.", ""])
