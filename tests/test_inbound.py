"""Bounces, complaints and mailto: unsubscribes that come back later — over SMTP to the inbound
endpoint and through an IMAP mailbox — each ending in the right delivery state and suppression.
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiosmtplib
import pytest
import sqlalchemy as sa

from jobs.newsletter.inbound import InboundMail, inbound_smtp
from jobs.newsletter.kind import send_run
from jobs.report.data import gather
from scheduler.context import ServiceContext
from scheduler.delivery.tokens import Signer
from scheduler.delivery.verp import Verp
from scheduler.inbound import smtp_server
from scheduler.inbound.imap_poller import ImapOptions, poll_once
from scheduler.settings import ImapSecurity
from scheduler.store import suppressions as suppression_store
from scheduler.store.tables import deliveries, tracking_events
from tests import bounce_samples as samples
from tests.imap_server import ImapServer
from tests.newsletter_fixtures import (
    SECRET,
    claim_run,
    context_for,
    settings_for,
    write_config,
)
from tests.smtp_server import Received, SmtpServer

BOUNCES = "bounces@acme.example"
RECIPIENTS = ["ann@example.com", "bob@example.com", "cy@example.com", "dee@example.com"]


@dataclass
class Sent:
    ctx: ServiceContext
    run_id: int
    ids: dict[str, int]  # recipient -> delivery id
    received: dict[str, Received]  # recipient -> what the relay got


async def _send(ctx: ServiceContext, when: datetime) -> Sent:
    with SmtpServer() as relay:
        ctx.settings.smtp_port = relay.port
        run_id = claim_run(ctx, when)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert result.status == "done", result.detail
    with ctx.begin() as conn:
        ids = dict(conn.execute(sa.select(deliveries.c.recipient, deliveries.c.id)
                                .where(deliveries.c.run_id == run_id)).all())
    return Sent(ctx, run_id, ids, {r.rcpt_tos[0]: r for r in relay.received})


@pytest.fixture
async def sent(tmp_path: Path, db_url: str, t0: datetime) -> AsyncIterator[Sent]:
    write_config(tmp_path, rows=RECIPIENTS)
    ctx = context_for(settings_for(tmp_path, db_url, bounce_address=BOUNCES,
                                   soft_bounce_limit=2))
    yield await _send(ctx, t0)
    ctx.db.dispose()


@contextlib.asynccontextmanager
async def _endpoint(ctx: ServiceContext) -> AsyncIterator[int]:
    mail = InboundMail(ctx)
    server = await smtp_server.start(smtp_server.InboundOptions("127.0.0.1", 0, 1_000_000,
                                                                "mx.test"),
                                     mail.accepts, mail.handle)
    try:
        yield smtp_server.bound_port(server)
    finally:
        server.close()


async def _deliver(port: int, data: bytes, rcpt: str, sender: str = "") -> Any:
    """As a relay sends a bounce: MAIL FROM:<> (the null sender) unless told otherwise."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)
    await client.connect()
    try:
        return await client.sendmail(sender, [rcpt], data)
    finally:
        await client.quit()


def _row(ctx: ServiceContext, delivery_id: int) -> Any:
    with ctx.begin() as conn:
        return conn.execute(sa.select(deliveries).where(deliveries.c.id == delivery_id)).one()


def _events(ctx: ServiceContext, kind: str) -> list[Any]:
    with ctx.begin() as conn:
        return list(conn.execute(sa.select(tracking_events)
                                 .where(tracking_events.c.kind == kind)).all())


def _reason(ctx: ServiceContext, email: str) -> str | None:
    with ctx.begin() as conn:
        return suppression_store.reason_of(conn, email)


async def test_messages_carry_a_verp_return_path_per_delivery(sent: Sent) -> None:
    verp = Verp(Signer(SECRET), BOUNCES)
    for rcpt, item in sent.received.items():
        assert item.mail_from.startswith("bounces+") and item.mail_from.endswith("@acme.example")
        assert verp.delivery_id(item.mail_from) == sent.ids[rcpt]
        assert rcpt.split("@")[0] not in item.mail_from  # no address inside the token
        msg = item.parsed()
        assert msg["List-Id"] == "news <news.acme.example>"
        assert msg["Feedback-ID"] == "news:newsletter:martech"


async def test_hard_bounce_over_smtp_bounces_the_row_and_suppresses(sent: Sent) -> None:
    ann = sent.received["ann@example.com"]
    report = samples.dsn(to=ann.mail_from, recipient="ann@example.com", sent=ann.data)
    async with _endpoint(sent.ctx) as port:
        await _deliver(port, report, ann.mail_from)
        await _deliver(port, report, ann.mail_from)  # the relay re-sends: nothing doubles
    row = _row(sent.ctx, sent.ids["ann@example.com"])
    assert row.status == "bounced" and row.last_code == 550
    assert "5.1.1" in row.last_error and "bounced later" in row.last_error
    assert _reason(sent.ctx, "ann@example.com") == "hard_bounce"
    bounced = _events(sent.ctx, "bounced")
    assert [(e.delivery_id, e.campaign) for e in bounced] == [(sent.ids["ann@example.com"],
                                                               "news")]
    assert _row(sent.ctx, sent.ids["bob@example.com"]).status == "sent"


async def test_soft_bounces_are_counted_and_suppress_at_the_limit(sent: Sent,
                                                                  t0: datetime) -> None:
    bob = sent.received["bob@example.com"]
    soft = samples.dsn(to=bob.mail_from, recipient="bob@example.com", sent=bob.data,
                       status="4.2.2", diagnostic="smtp; 452 4.2.2 Mailbox full")
    async with _endpoint(sent.ctx) as port:
        await _deliver(port, soft, bob.mail_from)
        await _deliver(port, soft, bob.mail_from)  # same delivery twice counts once
        first = _row(sent.ctx, sent.ids["bob@example.com"])
        assert first.status == "bounced" and "soft bounce" in first.last_error
        assert _reason(sent.ctx, "bob@example.com") is None  # 1 of 2
        second = await _send(sent.ctx, t0.replace(hour=10))  # the next issue bounces too
        bob2 = second.received["bob@example.com"]
        await _deliver(port, samples.dsn(to=bob2.mail_from, recipient="bob@example.com",
                                         sent=bob2.data, status="4.2.2",
                                         diagnostic="smtp; 452 4.2.2 Mailbox full"),
                       bob2.mail_from)
    assert len(_events(sent.ctx, "soft_bounce")) == 2
    assert _reason(sent.ctx, "bob@example.com") == "soft_bounce"


async def test_forged_or_foreign_tokens_are_refused(sent: Sent) -> None:
    cy = sent.received["cy@example.com"]
    other_key = Verp(Signer("someone-else"), BOUNCES).address(sent.ids["cy@example.com"])
    tampered = cy.mail_from.replace("bounces+", "bounces+A", 1)
    mail = InboundMail(sent.ctx)
    for address in (other_key, tampered):
        report = samples.dsn(to=address, recipient="cy@example.com", sent=cy.data)
        applied = await mail.handle("", [address], report)
        assert [a.action for a in applied] == ["forged"]
    assert _row(sent.ctx, sent.ids["cy@example.com"]).status == "sent"
    assert _reason(sent.ctx, "cy@example.com") is None
    async with _endpoint(sent.ctx) as port:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await _deliver(port, b"Subject: x\r\n\r\nhi\r\n", "postmaster@elsewhere.example")


async def test_complaint_and_mailto_unsubscribe_over_smtp(sent: Sent) -> None:
    dee = sent.received["dee@example.com"]
    # An FBL report to the bounce address, original without Return-Path: the signed
    # unsubscribe token in its List-Unsubscribe header identifies campaign and address.
    async with _endpoint(sent.ctx) as port:
        await _deliver(port, samples.arf(to=BOUNCES, sent=dee.data), BOUNCES)
        assert _reason(sent.ctx, "dee@example.com") == "complaint"
        cy = sent.received["cy@example.com"]
        mailto = next(u.strip(" <>") for u in str(cy.parsed()["List-Unsubscribe"]).split(",")
                      if "mailto:" in u)
        address, _q, query = mailto.removeprefix("mailto:").partition("?subject=")
        await _deliver(port, samples.mailto_unsubscribe(to=address, sender="cy@example.com",
                                                        subject=unquote(query)), address)
    complained = _events(sent.ctx, "complained")
    assert [(e.campaign, e.recipient) for e in complained] == [("news", "dee@example.com")]
    assert _reason(sent.ctx, "cy@example.com") == "unsubscribed"
    assert [e.recipient for e in _events(sent.ctx, "unsubscribed")] == ["cy@example.com"]


async def test_imap_mailbox_reports_end_in_the_right_state(sent: Sent) -> None:
    ann, bob = sent.received["ann@example.com"], sent.received["bob@example.com"]
    cy = sent.received["cy@example.com"]
    with ImapServer({"bounce-box": "pw"}) as imap:
        # Postfix DSN as a mailbox receives it: the envelope is gone, Delivered-To keeps it.
        dsn_uid = imap.deliver(samples.dsn(
            to=BOUNCES, recipient="ann@example.com", sent=ann.data,
            extra_headers=(f"Delivered-To: {ann.mail_from}",)))
        # qmail's non-DSN bounce: only flufl.bounce understands it.
        qmail_uid = imap.deliver(samples.qmail_bounce(
            to=bob.mail_from, recipient="bob@example.com",
            extra_headers=(f"Delivered-To: {bob.mail_from}",)))
        # A Yahoo-style feedback report: the original's Return-Path holds the VERP token.
        arf_uid = imap.deliver(samples.arf(to=BOUNCES, sent=cy.data, return_path=cy.mail_from))
        noise_uid = imap.deliver(b"From: someone@example.org\r\nSubject: hi\r\n\r\nhello\r\n")
        options = ImapOptions("127.0.0.1", imap.port, "bounce-box", "pw",
                              security=ImapSecurity.none, timeout_s=10)
        mail = InboundMail(sent.ctx)
        assert await poll_once(options, mail.handle) == 4
        assert await poll_once(options, mail.handle) == 0  # all flagged \Seen
        for uid in (dsn_uid, qmail_uid, arf_uid, noise_uid):
            assert "\\Seen" in imap.flags(uid)
    assert _row(sent.ctx, sent.ids["ann@example.com"]).status == "bounced"
    assert _reason(sent.ctx, "ann@example.com") == "hard_bounce"
    bob_row = _row(sent.ctx, sent.ids["bob@example.com"])
    assert bob_row.status == "bounced" and "flufl" in bob_row.last_error
    assert _reason(sent.ctx, "bob@example.com") == "hard_bounce"
    assert _reason(sent.ctx, "cy@example.com") == "complaint"
    complained = _events(sent.ctx, "complained")
    assert [e.delivery_id for e in complained] == [sent.ids["cy@example.com"]]
    assert _row(sent.ctx, sent.ids["dee@example.com"]).status == "sent"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_service_component_listens_only_when_enabled(sent: Sent) -> None:
    ctx = sent.ctx
    await asyncio.wait_for(inbound_smtp(ctx), 2)  # off by default: returns at once
    port = _free_port()
    ctx.settings.inbound_smtp_enabled = True
    ctx.settings.inbound_smtp_port = port
    task = asyncio.create_task(inbound_smtp(ctx))
    try:
        ann = sent.received["ann@example.com"]
        for _ in range(100):
            with contextlib.suppress(OSError):
                await _deliver(port, samples.dsn(to=ann.mail_from, recipient="ann@example.com",
                                                 sent=ann.data), ann.mail_from)
                break
            await asyncio.sleep(0.05)
        assert _row(ctx, sent.ids["ann@example.com"]).status == "bounced"
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 10)


async def test_report_shows_complaint_rate_against_the_line(sent: Sent, t0: datetime) -> None:
    dee = sent.received["dee@example.com"]
    async with _endpoint(sent.ctx) as port:
        await _deliver(port, samples.arf(to=BOUNCES, sent=dee.data, return_path=dee.mail_from),
                       BOUNCES)
        ann = sent.received["ann@example.com"]
        await _deliver(port, samples.dsn(to=ann.mail_from, recipient="ann@example.com",
                                         sent=ann.data), ann.mail_from)
    with sent.ctx.begin() as conn:
        data = gather(conn, "weekly", {"news": "newsletter"}, [], t0 - timedelta(days=1),
                      datetime.now(UTC) + timedelta(days=1), datetime.now(UTC))
    rep = data.campaigns[0].reputation
    assert rep["sent"] == 4 and rep["complaints"] == 1 and rep["bounced_later"] == 1
    assert rep["complaint_rate"] == 0.25 and rep["level"] == "over"
    assert "OVER the 0.3% limit" in rep["summary"]
    assert data.campaigns[0].events["complained"] == 1
