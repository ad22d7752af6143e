"""The delivery ledger (ARCHITECTURE.md, invariant 3): one row per recipient before anything is
sent.

pending → sending → sent | failed | bounced | unknown (and ``skipped`` for suppressed rows).
A batch is claimed (``sending``) in one transaction and its outcomes are recorded in one more;
rows found in ``sending`` after a crash were mid-transaction and are resolved by policy —
only a dead claimer's rows (see ``jobs.newsletter.claims``), never a live sender's batch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler.clock import utc
from scheduler.delivery.base import SendOutcome
from scheduler.store.dialect import insert_for, skip_locked
from scheduler.store.tables import deliveries, suppressions, tracking_events

MAX_BACKOFF = timedelta(hours=1)


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    recipient: str
    attempts: int  # including the current claim
    message_id: str | None
    variables: dict[str, Any] | None


def materialise(conn: sa.Connection, run_id: int, rows: Sequence[tuple[str, dict[str, Any]]],
                due_at: Callable[[dict[str, Any]], datetime] | None = None) -> None:
    """Insert pending rows; a recipient already in the run (a duplicate) is a no-op.

    ``due_at`` gives each row the time it may be sent (per-recipient zones); without it a
    row is due as soon as the run sends.
    """
    if not rows:
        return
    stmt = insert_for(conn, deliveries).on_conflict_do_nothing()
    conn.execute(stmt, [{"run_id": run_id, "recipient": email, "status": "pending",
                         "attempts": 0, "variables": variables,
                         "due_at": due_at(variables) if due_at else None}
                        for email, variables in rows])


def skip_overdue(conn: sa.Connection, run_id: int, before: datetime) -> int:
    """Pending rows due before ``before`` are too late to send: ``skipped``, with why."""
    result = conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.run_id == run_id, deliveries.c.status == "pending",
               deliveries.c.due_at < before)
        .values(status="skipped", next_attempt_at=None,
                last_error=f"too late: due before {before:%Y-%m-%d %H:%M} UTC, "
                           "past misfire_grace or max_delay"))
    return int(result.rowcount or 0)


def exclude_suppressed(conn: sa.Connection, run_id: int) -> int:
    """Mark rows whose address is on the suppression list as ``skipped``; return how many."""
    suppressed = sa.select(suppressions.c.email).scalar_subquery()
    result = conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.run_id == run_id, deliveries.c.status == "pending",
               deliveries.c.recipient.in_(suppressed))
        .values(status="skipped", last_error="suppressed"))
    return int(result.rowcount or 0)


def assign_message_ids(conn: sa.Connection, run_id: int, prefix: str, suffix: str) -> None:
    """Deterministic Message-IDs ``<prefix><id><suffix>``: the same on every attempt."""
    conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.run_id == run_id, deliveries.c.message_id.is_(None))
        .values(message_id=sa.literal(prefix) + sa.cast(deliveries.c.id, sa.String)
                + sa.literal(suffix)))


def recover(conn: sa.Connection, run_id: int, policy: str, now: datetime, *,
            claimers: Collection[str], lease: timedelta) -> int:
    """Rows left in ``sending`` by a dead claimer: ``unknown`` (at_most_once) or re-sent.

    Only rows claimed by one of ``claimers`` (this node, or nodes known dead), by nobody, or
    longer ago than ``lease`` are touched: another live sender's in-flight batch is its own.
    """
    owner = sa.or_(deliveries.c.claimed_by.is_(None), deliveries.c.claimed_at.is_(None),
                   deliveries.c.claimed_at < now - lease,
                   deliveries.c.claimed_by.in_(list(claimers)))
    stuck = (deliveries.c.run_id == run_id) & (deliveries.c.status == "sending") & owner
    if policy == "at_least_once":
        values: dict[str, Any] = {"status": "pending", "next_attempt_at": None,
                                  "last_error": "re-sent after a crash (at_least_once)"}
    else:
        values = {"status": "unknown",
                  "last_error": "interrupted mid-send; not re-sent (at_most_once)"}
    result = conn.execute(sa.update(deliveries).where(stuck).values(**values))
    return int(result.rowcount or 0)


def in_flight(conn: sa.Connection, run_id: int) -> int:
    """How many rows of the run are claimed (``sending``) and not yet recorded."""
    return int(conn.execute(sa.select(sa.func.count()).where(
        deliveries.c.run_id == run_id, deliveries.c.status == "sending")).scalar() or 0)


def skip_pending(conn: sa.Connection, run_id: int, reason: str) -> int:
    """An abandoned run (missed, skipped past its max delay): its pending rows never go out."""
    result = conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.run_id == run_id, deliveries.c.status == "pending")
        .values(status="skipped", last_error=reason[:1000], next_attempt_at=None))
    return int(result.rowcount or 0)


def claim_batch(conn: sa.Connection, run_id: int, limit: int, node: str, now: datetime
                ) -> list[DeliveryRow]:
    """Claim up to ``limit`` due pending rows (skip_locked on PostgreSQL), marking them sending.

    Due: its retry time has come, and so has its recipient's send time (``due_at``).
    """
    due = sa.and_(
        sa.or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= now),
        sa.or_(deliveries.c.due_at.is_(None), deliveries.c.due_at <= now))
    select = (sa.select(deliveries.c.id, deliveries.c.recipient, deliveries.c.attempts,
                        deliveries.c.message_id, deliveries.c.variables)
              .where(deliveries.c.run_id == run_id, deliveries.c.status == "pending", due)
              .order_by(deliveries.c.id).limit(limit))
    rows = conn.execute(skip_locked(conn, select)).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(ids)).values(
        status="sending", claimed_by=node, claimed_at=now,
        attempts=deliveries.c.attempts + 1))
    return [DeliveryRow(r.id, r.recipient, r.attempts + 1, r.message_id, r.variables)
            for r in rows]


def release(conn: sa.Connection, ids: Iterable[int]) -> None:
    """Claimed but never attempted (pause, relay unreachable): back to pending, uncounted."""
    ids = list(ids)
    if ids:
        conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(ids)).values(
            status="pending", attempts=deliveries.c.attempts - 1))


@dataclass
class BatchTally:
    sent: int = 0
    retry: int = 0
    failed: int = 0
    bounced: int = 0


def record(conn: sa.Connection, *, campaign: str, run_id: int,
           results: Sequence[tuple[DeliveryRow, SendOutcome]], now: datetime,
           max_attempts: int, backoff: timedelta) -> BatchTally:
    """Commit one batch's outcomes: sent rows in one statement, the rest row by row."""
    tally = BatchTally()
    sent_ids = [row.id for row, out in results if out.ok]
    if sent_ids:
        conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(sent_ids)).values(
            status="sent", sent_at=now, last_code=250, last_error=None, next_attempt_at=None))
        tally.sent = len(sent_ids)
    updates: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for row, out in results:
        if out.ok:
            continue
        if out.hard_bounce:
            status, next_at = "bounced", None
            tally.bounced += 1
            conn.execute(insert_for(conn, suppressions).values(
                email=row.recipient, reason="hard_bounce", at=now, campaign=campaign,
                detail=(out.error or "")[:500]).on_conflict_do_nothing())
        elif out.permanent or row.attempts >= max_attempts:
            status, next_at = "failed", None
            tally.failed += 1
        else:
            delay = min(backoff * (2 ** (row.attempts - 1)), MAX_BACKOFF)
            status, next_at = "pending", now + delay
            tally.retry += 1
        updates.append({"b_id": row.id, "b_status": status, "b_next": next_at,
                        "b_error": (out.error or "")[:1000], "b_code": out.code})
        if status in ("bounced", "failed"):
            events.append({"at": now, "kind": status, "campaign": campaign, "run_id": run_id,
                           "delivery_id": row.id, "recipient": row.recipient,
                           "detail": (out.error or "")[:500]})
    if updates:
        conn.execute(
            sa.update(deliveries).where(deliveries.c.id == sa.bindparam("b_id")).values(
                status=sa.bindparam("b_status"), next_attempt_at=sa.bindparam("b_next"),
                last_error=sa.bindparam("b_error"), last_code=sa.bindparam("b_code")),
            updates)
    if events:
        conn.execute(sa.insert(tracking_events), events)
    return tally


def counts(conn: sa.Connection, run_id: int) -> dict[str, int]:
    stmt = (sa.select(deliveries.c.status, sa.func.count())
            .where(deliveries.c.run_id == run_id).group_by(deliveries.c.status))
    return {row[0]: int(row[1]) for row in conn.execute(stmt)}


def next_retry_at(conn: sa.Connection, run_id: int) -> datetime | None:
    """When the earliest pending row becomes due (None: nothing pending).

    A row's time is its retry time, else its send time (``due_at``): a retry is always
    scheduled after the row's send time, so the later of the two is the first one set.
    """
    when = sa.func.coalesce(deliveries.c.next_attempt_at, deliveries.c.due_at)
    stmt = sa.select(sa.func.count(), sa.func.count(when), sa.func.min(when)).where(
        deliveries.c.run_id == run_id, deliveries.c.status == "pending")
    total, scheduled, earliest = conn.execute(stmt).one()
    if not total:
        return None
    if total > scheduled or earliest is None:  # some rows are due right away
        return datetime.min.replace(tzinfo=UTC)
    return utc(earliest)


def per_recipient(conn: sa.Connection, run_id: int) -> dict[str, str]:
    stmt = sa.select(deliveries.c.recipient, deliveries.c.status).where(
        deliveries.c.run_id == run_id)
    return {row[0]: row[1] for row in conn.execute(stmt)}
