"""Reading inbound mail into facts: RFC 3464 per-recipient blocks, ARF, flufl.bounce, mailto."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiosmtplib
import pytest
import trustme

from jobs.newsletter.inbound import imap_mailbox, inbound_smtp
from martech.compose import build_registry
from scheduler.inbound import smtp_server
from scheduler.inbound.imap_poller import ImapOptions, poll_forever, poll_once
from scheduler.inbound.parse import parse
from scheduler.settings import ImapSecurity
from tests import bounce_samples as samples
from tests.imap_server import ImapServer

SENT = (b"From: Acme News <news@acme.example>\r\nTo: ann@example.com\r\nSubject: hi\r\n"
        b"Message-ID: <mt.news.1.7@acme.example>\r\n"
        b"List-Unsubscribe: <https://mt.acme.example/unsubscribe/bmV3cx9hbm5AZXhhbXBsZS5jb20."
        b"AAAAAAAAAAAAAAAAAAAAAA>\r\n\r\nbody\r\n")
VERP = "bounces+MQ.AAAAAAAAAAAAAAAAAAAAAA@acme.example"


@pytest.mark.parametrize(("status", "action", "hard", "soft"), [
    ("5.1.1", "failed", True, False),
    ("5.2.2", "failed", False, True),   # mailbox full: clears when the owner tidies up
    ("4.4.7", "failed", False, True),   # the relay gave up on a transient problem
    ("4.4.1", "delayed", False, False),  # a warning: still being retried
])
def test_dsn_recipient_blocks(status: str, action: str, hard: bool, soft: bool) -> None:
    inbound = parse(samples.dsn(to=VERP, recipient="ann@example.com", sent=SENT, status=status,
                                action=action, diagnostic=f"smtp; 550 {status} x"), [VERP])
    assert inbound.kind == "bounce" and inbound.source == "dsn"
    (block,) = inbound.recipients
    assert (block.address, block.status, block.hard, block.soft) == (
        "ann@example.com", status, hard, soft)
    assert VERP in inbound.bounce_addresses
    assert inbound.original_message_id == "mt.news.1.7@acme.example"


def test_opensmtpd_action_error_is_a_failure() -> None:
    data = samples.dsn(to=VERP, recipient="ann@example.com", sent=SENT, action="error")
    assert parse(data).recipients[0].action == "failed"


def test_arf_feedback_type_and_tokens() -> None:
    inbound = parse(samples.arf(to="fbl@acme.example", sent=SENT, feedback_type="not-spam",
                                return_path=VERP))
    assert inbound.kind == "complaint" and inbound.feedback_type == "not-spam"
    assert VERP in inbound.bounce_addresses
    assert inbound.unsubscribe_tokens == ("bmV3cx9hbm5AZXhhbXBsZS5jb20.AAAAAAAAAAAAAAAAAAAAAA",)


def test_qmail_goes_through_flufl_and_noise_is_other() -> None:
    bounce = parse(samples.qmail_bounce(to=VERP, recipient="ann@example.com"), [VERP])
    assert bounce.source == "flufl" and bounce.recipients[0].hard
    assert parse(b"From: x@example.org\r\nSubject: out of office\r\n\r\nback monday\r\n"
                 ).kind == "other"
    assert parse(b"\x00\xff garbage").kind == "other"


def test_mailto_without_a_token_carries_none() -> None:
    inbound = parse(samples.mailto_unsubscribe(to="unsubscribe@acme.example",
                                               sender="ann@example.com",
                                               subject="please remove me"))
    assert inbound.kind == "unsubscribe" and inbound.unsubscribe_tokens == ()


async def test_a_handler_failure_answers_451_so_the_relay_retries() -> None:
    async def broken(_from: str, _rcpt: list[str], _data: bytes) -> None:
        raise RuntimeError("database away")

    server = await smtp_server.start(smtp_server.InboundOptions("127.0.0.1", 0, 100_000, "mx"),
                                     lambda _a: True, broken)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_server.bound_port(server),
                             timeout=5)
    try:
        await client.connect()
        with pytest.raises(aiosmtplib.SMTPDataError) as caught:
            await client.sendmail("", ["bounces@acme.example"], b"Subject: x\r\n\r\nhi\r\n")
        assert caught.value.code == 451
        await client.quit()
    finally:
        server.close()


async def test_a_refused_imap_login_stops_the_poller(tmp_path: Path) -> None:
    with ImapServer({"box": "right"}) as imap:
        options = ImapOptions("127.0.0.1", imap.port, "box", "wrong",
                              security=ImapSecurity.none, timeout_s=5, poll_s=0.01)
        await asyncio.wait_for(poll_forever(options, _never, asyncio.Event()), 10)
        assert imap.state.logins == [("box", False)]  # tried once, not every poll


async def _never(_from: str, _rcpt: list[str], _data: bytes) -> None:
    raise AssertionError("nothing to handle")


async def test_imap_over_tls_with_a_trusted_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    authority = trustme.CA()
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # the poller trusts only this CA
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    got: list[bytes] = []

    async def keep(_from: str, _rcpt: list[str], data: bytes) -> None:
        got.append(data)

    with ImapServer({"box": "pw"}, ssl_context=context) as imap:
        imap.deliver(b"Subject: a bounce\r\n\r\nhello\r\n")
        options = ImapOptions("127.0.0.1", imap.port, "box", "pw", timeout_s=10)
        assert options.security == ImapSecurity.tls  # the default
        assert await poll_once(options, keep) == 1
    assert got == [b"Subject: a bounce\r\n\r\nhello\r\n"]


def test_the_newsletter_kind_registers_both_receivers() -> None:
    components = build_registry().components
    assert components["newsletter-inbound-smtp"] is inbound_smtp
    assert components["newsletter-imap-poller"] is imap_mailbox
