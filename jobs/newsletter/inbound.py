"""Newsletter side of inbound mail: which addresses we receive for, and what each message does.

The two receivers (``scheduler.inbound.smtp_server`` and ``scheduler.inbound.imap_poller``) hand
every message to :meth:`InboundMail.handle`. It parses the message, finds the delivery through a
*verified* VERP token (or, for complaints and unsubscribes, a verified unsubscribe token) and
applies :mod:`jobs.newsletter.feedback` in one transaction. A message whose only token is forged
is refused and logged; nothing unsigned ever suppresses anyone.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

import sqlalchemy as sa

from jobs.newsletter import feedback
from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.feedback import Applied, Delivery, SoftPolicy
from scheduler.context import ServiceContext
from scheduler.delivery.message import parse_mailbox
from scheduler.delivery.tokens import verify_unsubscribe
from scheduler.delivery.verp import Verp
from scheduler.errors import MartechError
from scheduler.inbound import imap_poller, smtp_server
from scheduler.inbound.parse import Inbound, parse
from scheduler.keys import signer_for
from scheduler.logs import address_ref
from scheduler.privacy import is_pseudonym

log = logging.getLogger("martech.inbound")


class InboundMail:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.signer = signer_for(settings)
        self.verp = Verp(self.signer, settings.bounce_address) if settings.bounce_address \
            else None
        self.policy = SoftPolicy(settings.soft_bounce_limit,
                                 timedelta(days=settings.soft_bounce_window_days))

    def domains(self) -> set[str]:
        """Our sending domains: ``unsubscribe@`` each of them is the mailto: address."""
        out = set()
        for campaign in self.ctx.config.campaigns.values():
            if isinstance(campaign, NewsletterCampaign):
                with contextlib.suppress(MartechError):  # validate reports bad addresses
                    out.add(parse_mailbox(campaign.from_)[1].rpartition("@")[2].lower())
        return out

    def accepts(self, address: str) -> bool:
        """RCPT TO we take: the bounce address (and its VERP forms), unsubscribe@<our domain>."""
        local, _sep, domain = address.strip().strip("<>").rpartition("@")
        if self.verp is not None and self.verp.is_ours(address):
            return True
        return local.lower() == "unsubscribe" and domain.lower() in self.domains()

    async def handle(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> list[Applied]:
        """Apply one message; raises only for a database failure (the sender retries)."""
        inbound = parse(data, rcpt_tos)
        applied = await self.ctx.in_thread(self._apply, inbound)
        for item in applied:
            level = logging.WARNING if item.action == "forged" else logging.INFO
            log.log(level, "inbound %s: %s", inbound.kind, item.action, extra={
                "action": f"inbound_{item.action}", "job": item.campaign,
                "delivery_id": item.delivery_id, "source": inbound.source,
                "address": address_ref(item.recipient) if item.recipient else None,
                "suppressed": item.suppressed})
        return applied

    def _apply(self, inbound: Inbound) -> list[Applied]:
        now = self.ctx.clock.now()
        with self.ctx.begin() as conn:
            if inbound.kind == "bounce":
                return [self._bounce(conn, inbound, now)]
            if inbound.kind == "complaint":
                return [self._complaint(conn, inbound, now)]
            if inbound.kind == "unsubscribe":
                return self._unsubscribe(conn, inbound, now)
        return [Applied("ignored")]

    def _verp_delivery(self, conn: sa.Connection, inbound: Inbound
                       ) -> tuple[Delivery | None, bool]:
        """The delivery named by a genuine token, and whether a forged one was seen."""
        forged = False
        if self.verp is None:
            return None, False
        for address in inbound.bounce_addresses:
            if not self.verp.is_ours(address) or "+" not in address.partition("@")[0]:
                continue
            delivery_id = self.verp.delivery_id(address)
            if delivery_id is None:
                forged = True
                continue
            delivery = feedback.find_delivery(conn, delivery_id)
            if delivery is not None:
                return delivery, forged
        return None, forged

    def _bounce(self, conn: sa.Connection, inbound: Inbound, now: datetime) -> Applied:
        delivery, forged = self._verp_delivery(conn, inbound)
        if delivery is None:
            return Applied("forged" if forged else "unmatched")
        return feedback.apply_bounce(conn, inbound, delivery, now, self.policy)

    def _token_delivery(self, conn: sa.Connection, token: str) -> tuple[Delivery | None, bool]:
        """The delivery an unsubscribe token names (None for a test message's token, or a
        forgotten person's delivery), and whether the token is genuine at all."""
        ref = verify_unsubscribe(self.signer, token)
        if ref is None:
            return None, False
        delivery = feedback.find_delivery(conn, ref.delivery_id) if ref.delivery_id else None
        if delivery is not None and is_pseudonym(delivery.recipient):
            return None, True  # forgotten: already suppressed by its hash
        return delivery, True

    def _complaint(self, conn: sa.Connection, inbound: Inbound, now: datetime) -> Applied:
        delivery, forged = self._verp_delivery(conn, inbound)
        if delivery is not None:
            return feedback.apply_complaint(conn, inbound, delivery.campaign,
                                            delivery.recipient, delivery, now)
        genuine = False
        for token in inbound.unsubscribe_tokens:
            found, valid = self._token_delivery(conn, token)
            if found is not None:
                return feedback.apply_complaint(conn, inbound, found.campaign, found.recipient,
                                                found, now)
            genuine, forged = genuine or valid, forged or not valid
        if genuine:
            return Applied("ignored")
        return Applied("forged" if forged else "unmatched")

    def _unsubscribe(self, conn: sa.Connection, inbound: Inbound, now: datetime) -> list[Applied]:
        done = []
        for token in inbound.unsubscribe_tokens:
            found, valid = self._token_delivery(conn, token)
            if found is not None:
                done.append(feedback.apply_unsubscribe(conn, found.campaign, found.recipient,
                                                       now, found))
            else:  # a test message's link unsubscribes no one
                done.append(Applied("ignored" if valid else "forged"))
        return done or [Applied("unmatched")]


async def inbound_smtp(ctx: ServiceContext) -> None:
    """Component: the inbound SMTP endpoint (``MARTECH_INBOUND_SMTP_ENABLED``; off by default)."""
    settings = ctx.settings
    if not settings.inbound_smtp_enabled:
        return
    mail = InboundMail(ctx)
    await smtp_server.serve(
        smtp_server.InboundOptions(settings.inbound_smtp_host, settings.inbound_smtp_port,
                                   settings.inbound_max_message_bytes, settings.node_name),
        mail.accepts, mail.handle, ctx.stopping)


async def imap_mailbox(ctx: ServiceContext) -> None:
    """Component: poll the bounce mailbox (``MARTECH_IMAP_HOST``; off when unset)."""
    if not ctx.settings.imap_host:
        return
    try:
        options = imap_poller.ImapOptions.from_settings(ctx.settings)
    except MartechError as exc:  # restarting would not fix a setting
        log.error("IMAP poller not started: %s", exc, extra={"action": "imap_config"})
        return
    mail = InboundMail(ctx)
    await imap_poller.poll_forever(options, mail.handle, ctx.stopping)
