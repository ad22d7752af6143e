"""What a bounce, a complaint or a mailto: unsubscribe does to the ledger and the suppression list.

- hard bounce: the delivery row becomes ``bounced``; the address is suppressed (``hard_bounce``);
  one ``bounced`` event.
- soft bounce: the row becomes ``bounced`` too (the message did not arrive) with the reason;
  one ``soft_bounce`` event; ``soft_bounce_limit`` of them for one address within
  ``soft_bounce_window_days`` suppress it (``soft_bounce``).
- complaint (ARF): the address is suppressed (``complaint``); one ``complained`` event per
  delivery (or per campaign and address when only the unsubscribe token identifies it).
- unsubscribe: exactly what the https link does.

Every step is idempotent: the same report read twice (an IMAP mailbox polled again, a relay
re-sending after a lost reply) changes nothing the second time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from jobs.newsletter.http_unsubscribe import record_unsubscribe
from scheduler.inbound.parse import FailedRecipient, Inbound
from scheduler.store import suppressions as suppression_store
from scheduler.store.tables import deliveries, runs, tracking_events

_SMTP_CODE = re.compile(r"\b([245]\d\d)\b")
COUNTED_FEEDBACK = (None, "abuse", "fraud", "virus", "other")  # "not-spam" is no complaint


@dataclass(frozen=True)
class Delivery:
    id: int
    run_id: int
    campaign: str
    recipient: str
    status: str


@dataclass(frozen=True)
class Applied:
    """What one inbound message did; ``action`` is what the logs and metrics count."""

    action: str  # hard_bounce | soft_bounce | complaint | unsubscribed | duplicate | ignored
    campaign: str | None = None
    delivery_id: int | None = None
    recipient: str | None = None
    suppressed: bool = False


@dataclass(frozen=True)
class SoftPolicy:
    limit: int
    window: timedelta


def find_delivery(conn: sa.Connection, delivery_id: int) -> Delivery | None:
    row = conn.execute(
        sa.select(deliveries.c.id, deliveries.c.run_id, runs.c.campaign, deliveries.c.recipient,
                  deliveries.c.status)
        .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
        .where(deliveries.c.id == delivery_id)).first()
    return Delivery(*row) if row is not None else None


def _event_exists(conn: sa.Connection, kind: str, *, delivery_id: int | None,
                  campaign: str | None = None, recipient: str | None = None) -> bool:
    where = [tracking_events.c.kind == kind]
    if delivery_id is not None:
        where.append(tracking_events.c.delivery_id == delivery_id)
    else:
        where += [tracking_events.c.campaign == campaign, tracking_events.c.recipient == recipient]
    return conn.execute(sa.select(sa.literal(1)).where(*where).limit(1)).first() is not None


def _event(conn: sa.Connection, kind: str, now: datetime, *, campaign: str | None,
           delivery: Delivery | None, recipient: str | None, detail: str) -> None:
    conn.execute(sa.insert(tracking_events).values(
        at=now, kind=kind, campaign=campaign, run_id=delivery.run_id if delivery else None,
        delivery_id=delivery.id if delivery else None, recipient=recipient,
        detail=detail[:500]))


def _block_for(inbound: Inbound, recipient: str) -> FailedRecipient | None:
    """The recipient block about this delivery's address (else the first failure)."""
    failed = [r for r in inbound.recipients if r.action == "failed"]
    return next((r for r in failed if r.address == recipient.lower()),
                failed[0] if failed else None)


def apply_bounce(conn: sa.Connection, inbound: Inbound, delivery: Delivery, now: datetime,
                 policy: SoftPolicy) -> Applied:
    block = _block_for(inbound, delivery.recipient)
    if block is None:  # only "delayed" / "delivered" blocks: a warning, nothing failed yet
        return Applied("ignored", delivery.campaign, delivery.id)
    kind = "bounced" if block.hard else "soft_bounce"
    action = "hard_bounce" if block.hard else "soft_bounce"
    if _event_exists(conn, kind, delivery_id=delivery.id):
        return Applied("duplicate", delivery.campaign, delivery.id, delivery.recipient)
    code = _SMTP_CODE.search(block.diagnostic)
    label = "bounced later" if block.hard else "soft bounce"
    conn.execute(sa.update(deliveries).where(
        deliveries.c.id == delivery.id,
        deliveries.c.status.in_(("sent", "unknown", "bounced"))).values(
        status="bounced", last_error=f"{label} ({inbound.source}): {block.describe()}"[:1000],
        last_code=int(code.group(1)) if code else (550 if block.hard else 450)))
    _event(conn, kind, now, campaign=delivery.campaign, delivery=delivery,
           recipient=delivery.recipient, detail=f"{inbound.source}: {block.describe()}")
    suppressed = False
    if block.hard:
        suppressed = suppression_store.add(conn, delivery.recipient, "hard_bounce", now,
                                           campaign=delivery.campaign,
                                           detail=block.describe())
    elif soft_count(conn, delivery.recipient, now - policy.window) >= policy.limit:
        suppressed = suppression_store.add(
            conn, delivery.recipient, "soft_bounce", now, campaign=delivery.campaign,
            detail=f"{policy.limit} soft bounces within {policy.window.days} days; last: "
                   f"{block.describe()}"[:500])
    return Applied(action, delivery.campaign, delivery.id, delivery.recipient, suppressed)


def soft_count(conn: sa.Connection, recipient: str, since: datetime) -> int:
    return int(conn.execute(sa.select(sa.func.count()).where(
        tracking_events.c.kind == "soft_bounce", tracking_events.c.recipient == recipient,
        tracking_events.c.at >= since)).scalar() or 0)


def apply_complaint(conn: sa.Connection, inbound: Inbound, campaign: str, recipient: str,
                    delivery: Delivery | None, now: datetime) -> Applied:
    if inbound.feedback_type not in COUNTED_FEEDBACK:
        return Applied("ignored", campaign, delivery.id if delivery else None, recipient)
    if _event_exists(conn, "complained", delivery_id=delivery.id if delivery else None,
                     campaign=campaign, recipient=recipient):
        return Applied("duplicate", campaign, delivery.id if delivery else None, recipient)
    detail = f"feedback-type {inbound.feedback_type or 'unspecified'}"
    _event(conn, "complained", now, campaign=campaign, delivery=delivery, recipient=recipient,
           detail=detail)
    suppressed = suppression_store.add(conn, recipient, "complaint", now, campaign=campaign,
                                       detail=detail)
    return Applied("complaint", campaign, delivery.id if delivery else None, recipient,
                   suppressed)


def apply_unsubscribe(conn: sa.Connection, campaign: str, recipient: str, now: datetime,
                      delivery: Delivery | None = None) -> Applied:
    recorded = record_unsubscribe(conn, campaign, recipient, now,
                                  delivery_id=delivery.id if delivery else None,
                                  run_id=delivery.run_id if delivery else None)
    return Applied("unsubscribed" if recorded else "duplicate", campaign,
                   delivery.id if delivery else None, recipient, recorded)
