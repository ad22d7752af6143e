"""The delivery ledger (ARCHITECTURE.md, invariant 3): one row per recipient before anything is
sent.

pending → sending → sent | failed | bounced | unknown, or ``suppressed`` (on the suppression
list at materialisation or at claim time) and ``skipped`` (the run was abandoned). A batch is
claimed (``sending``, under a claim whose id is its fencing token: ``jobs.newsletter.claims``);
each row is marked ``on_wire`` in the group commit that lets its content go out
(``jobs.newsletter.wire``), and its outcome is recorded in a later group commit. Every write of
a claimed row is conditional on its token. When a claim dies, only its ``on_wire`` rows are in
doubt — ``unknown`` under at_most_once, re-sent with the same Message-ID under at_least_once —
and the others simply go back to ``pending``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scheduler.clock import utc
from scheduler.delivery.base import SendOutcome
from scheduler.store.dialect import in_list, insert_for, list_param, skip_locked
from scheduler.store.tables import deliveries, delivery_claims, suppressions, tracking_events

MAX_BACKOFF = timedelta(hours=1)
AT_MOST_ONCE = "at_most_once"
IN_DOUBT_AT_MOST_ONCE = "in doubt: the end of DATA was written, no reply; not re-sent " \
                        "(at_most_once)"
IN_DOUBT_AT_LEAST_ONCE = "in doubt: re-sent with the same Message-ID (at_least_once)"


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
    """Mark rows whose address is on the suppression list ``suppressed``; return how many."""
    suppressed = sa.select(suppressions.c.email).scalar_subquery()
    result = conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.run_id == run_id, deliveries.c.status == "pending",
               deliveries.c.recipient.in_(suppressed))
        .values(status="suppressed", last_error="suppressed"))
    return int(result.rowcount or 0)


def assign_message_ids(conn: sa.Connection, run_id: int, prefix: str, suffix: str) -> None:
    """Deterministic Message-IDs ``<prefix><id><suffix>``: the same on every attempt."""
    conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.run_id == run_id, deliveries.c.message_id.is_(None))
        .values(message_id=sa.literal(prefix) + sa.cast(deliveries.c.id, sa.String)
                + sa.literal(suffix)))


# -- claiming ------------------------------------------------------------------------------

def due_pending(run_id: int | sa.ColumnElement[int], now: datetime
                ) -> sa.ColumnElement[bool]:
    """Pending rows of the run that may be claimed at ``now``: their retry time has come, and
    so has their recipient's send time (``due_at``).

    Retry and send times are schedule times, judged like schedules by the node's (injected)
    clock: a node whose clock is off sends a retry early or late, never twice — who may send a
    row is decided by the claim, not by the time.
    """
    c = deliveries.c
    retry = sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now)
    send_time = sa.or_(c.due_at.is_(None), c.due_at <= now)
    return sa.and_(c.run_id == run_id, c.status == "pending", retry, send_time)


def candidates(conn: sa.Connection, run_id: int, limit: int, now: datetime
               ) -> list[sa.Row[Any]]:
    """Up to ``limit`` due pending rows, locked; rows another node is claiming are skipped."""
    select = (sa.select(deliveries.c.id, deliveries.c.recipient, deliveries.c.attempts,
                        deliveries.c.message_id, deliveries.c.variables)
              .where(due_pending(run_id, now)).order_by(deliveries.c.id).limit(limit))
    return list(conn.execute(skip_locked(conn, select)))


def due_count(conn: sa.Connection, run_id: int, now: datetime) -> int:
    """Due pending rows of the run, locked by a claimer or not."""
    return int(conn.execute(sa.select(sa.func.count()).where(due_pending(run_id, now)))
               .scalar() or 0)


SUPPRESSED_LATER = "suppressed after the run was materialised"


def suppress(conn: sa.Connection, ids: Sequence[int]) -> None:
    """Rows whose recipient was suppressed after materialisation: they never go out."""
    if ids:
        conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(list(ids))).values(
            status="suppressed", last_error=SUPPRESSED_LATER, next_attempt_at=None))


def suppressed_later(conn: sa.Connection, run_id: int) -> int:
    """Rows of the run a claim found suppressed since materialisation."""
    return int(conn.execute(sa.select(sa.func.count()).where(
        deliveries.c.run_id == run_id, deliveries.c.status == "suppressed",
        deliveries.c.last_error == SUPPRESSED_LATER)).scalar() or 0)


def take(conn: sa.Connection, rows: Sequence[sa.Row[Any]], token: int, node: str,
         now: datetime) -> list[DeliveryRow]:
    """Mark ``rows`` ``sending`` under claim ``token``."""
    conn.execute(sa.update(deliveries).where(deliveries.c.id.in_([r.id for r in rows])).values(
        status="sending", claim_id=token, on_wire=False, claimed_by=node, claimed_at=now,
        attempts=deliveries.c.attempts + 1))
    return [DeliveryRow(r.id, r.recipient, r.attempts + 1, r.message_id, r.variables)
            for r in rows]


def mark_on_wire(conn: sa.Connection, token: int, ids: Sequence[int]) -> None:
    """These rows' content may go out from now on: in doubt if their claim dies."""
    if ids:
        conn.execute(sa.update(deliveries).where(
            deliveries.c.id.in_(list(ids)), deliveries.c.claim_id == token,
            deliveries.c.status == "sending").values(on_wire=True))


def _settle_statement(dialect: str) -> sa.Update:
    c = deliveries.c
    is_sent = in_list(dialect, c.id, "sent")
    is_mark = in_list(dialect, c.id, "marks")
    return (sa.update(deliveries)
            .where(in_list(dialect, c.id, "ids"), c.claim_id == sa.bindparam("token"),
                   c.status == "sending")
            .values(status=sa.case((is_sent, "sent"), else_=c.status),
                    sent_at=sa.case((is_sent, sa.bindparam("at", type_=c.sent_at.type)),
                                    else_=c.sent_at),
                    last_code=sa.case((is_sent, 250), else_=c.last_code),
                    last_error=sa.case((is_sent, sa.null()), else_=c.last_error),
                    next_attempt_at=sa.case((is_sent, sa.null()), else_=c.next_attempt_at),
                    on_wire=sa.case((is_mark, sa.true()), else_=c.on_wire))
            .returning(c.id))


# Built once per dialect: constructing (or re-rendering) a statement costs more than running
# it on the hot path.
_SETTLE = {name: _settle_statement(name) for name in ("sqlite", "postgresql")}


def settle(conn: sa.Connection, token: int, *, sent: Sequence[int], marks: Sequence[int],
           now: datetime) -> int:
    """The common group commit in one statement: rows of claim ``token`` that were sent, and
    rows whose content may cross from now on. Returns how many rows it matched — fewer than
    asked means some are no longer ours (the claim was adopted): the caller rolls back.

    Each row is fenced by its own condition (``claim_id`` and still ``sending``): an adopter
    changes both under the row's lock, so of the two writers one sees the other's result.
    """
    ids = sorted({*sent, *marks})
    if not ids:
        return 0
    name = conn.dialect.name
    params = {"ids": list_param(name, ids), "sent": list_param(name, list(sent)),
              "marks": list_param(name, list(marks)), "token": token, "at": now}
    return len(conn.execute(_SETTLE[name], params).all())


def _in_doubt_values(policy: str) -> dict[str, Any]:
    if policy == AT_MOST_ONCE:
        return {"status": "unknown", "last_error": IN_DOUBT_AT_MOST_ONCE}
    return {"status": "pending", "next_attempt_at": None, "last_error": IN_DOUBT_AT_LEAST_ONCE}


def resolve(conn: sa.Connection, run_id: int, policy: str, *,
            token: int | None = None, orphans: bool = False) -> tuple[int, int]:
    """A dead claim's rows (``token``), or ``sending`` rows no claim holds (``orphans``):
    ``on_wire`` ones by ``policy``, the rest back to ``pending`` as if never claimed.

    A row ``sending`` with no claim id at all predates leases: in doubt. Returns
    ``(in doubt, released)``.
    """
    sending = (deliveries.c.run_id == run_id) & (deliveries.c.status == "sending")
    if token is not None:
        mine = deliveries.c.claim_id == token
    elif orphans:
        held = sa.exists().where(delivery_claims.c.id == deliveries.c.claim_id)
        mine = sa.or_(deliveries.c.claim_id.is_(None), ~held)
    else:
        raise ValueError("resolve needs a token or orphans=True")
    doubt_rows = sa.or_(deliveries.c.on_wire.is_(True), deliveries.c.claim_id.is_(None))
    doubt = conn.execute(sa.update(deliveries).where(sending, mine, doubt_rows)
                         .values(**_in_doubt_values(policy), on_wire=False))
    released = conn.execute(sa.update(deliveries).where(sending, mine).values(
        status="pending", on_wire=False, attempts=deliveries.c.attempts - 1))
    return int(doubt.rowcount or 0), int(released.rowcount or 0)


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


# -- recording -----------------------------------------------------------------------------

@dataclass
class BatchTally:
    sent: int = 0
    retry: int = 0
    failed: int = 0
    bounced: int = 0
    unknown: int = 0
    released: int = 0

    def add(self, other: BatchTally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.bounced + self.unknown


@dataclass(frozen=True)
class Policy:
    """What the campaign says about retries, and the clocks a commit stamps with."""

    delivery: str
    max_attempts: int
    backoff: timedelta


def _fate(row: DeliveryRow, out: SendOutcome, policy: Policy) -> str:
    if out.unreachable or not out.attempted:
        return "release"
    if out.hard_bounce:
        return "bounced"
    if out.permanent:
        return "failed"
    if out.in_doubt and (policy.delivery == AT_MOST_ONCE or row.attempts >= policy.max_attempts):
        return "unknown"
    return "failed" if row.attempts >= policy.max_attempts else "retry"


def record(conn: sa.Connection, *, campaign: str, run_id: int, token: int,
           results: Sequence[tuple[DeliveryRow, SendOutcome]], now: datetime,
           policy: Policy) -> BatchTally:
    """Commit outcomes of claim ``token``: sent rows in one statement, the rest executemany.

    ``now`` (the injected clock) stamps the record and schedules the retries.
    """
    tally = BatchTally()
    ours = deliveries.c.claim_id == token
    sent_ids = [row.id for row, out in results if out.ok]
    if sent_ids:
        conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(sent_ids), ours).values(
            status="sent", sent_at=now, last_code=250, last_error=None, next_attempt_at=None))
        tally.sent = len(sent_ids)
    updates: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for row, out in results:
        if out.ok:
            continue
        fate = _fate(row, out, policy)
        status, next_at, attempts = fate, None, row.attempts
        if fate == "release":  # never attempted: as if never claimed
            status, attempts = "pending", row.attempts - 1
            tally.released += 1
        elif fate == "retry":
            delay = min(policy.backoff * (2 ** (row.attempts - 1)), MAX_BACKOFF)
            status, next_at = "pending", now + delay
            tally.retry += 1
        else:
            setattr(tally, fate, getattr(tally, fate) + 1)
        if fate == "bounced":
            conn.execute(insert_for(conn, suppressions).values(
                email=row.recipient, reason="hard_bounce", at=now, campaign=campaign,
                detail=(out.error or "")[:500]).on_conflict_do_nothing())
        error = (out.error or "")[:1000]
        if fate == "unknown":
            error = f"{IN_DOUBT_AT_MOST_ONCE}: {error}"[:1000]
        updates.append({"b_id": row.id, "b_status": status, "b_next": next_at,
                        "b_error": error, "b_code": out.code, "b_attempts": attempts})
        if fate in ("bounced", "failed"):
            events.append({"at": now, "kind": fate, "campaign": campaign, "run_id": run_id,
                           "delivery_id": row.id, "recipient": row.recipient,
                           "detail": (out.error or "")[:500]})
    if updates:
        conn.execute(
            sa.update(deliveries).where(deliveries.c.id == sa.bindparam("b_id"), ours).values(
                status=sa.bindparam("b_status"), next_attempt_at=sa.bindparam("b_next"),
                last_error=sa.bindparam("b_error"), last_code=sa.bindparam("b_code"),
                attempts=sa.bindparam("b_attempts"), on_wire=False),
            updates)
    if events:
        conn.execute(sa.insert(tracking_events), events)
    return tally


# -- reading -------------------------------------------------------------------------------

def counts(conn: sa.Connection, run_id: int) -> dict[str, int]:
    stmt = (sa.select(deliveries.c.status, sa.func.count())
            .where(deliveries.c.run_id == run_id).group_by(deliveries.c.status))
    return {row[0]: int(row[1]) for row in conn.execute(stmt)}


def next_retry_in_s(conn: sa.Connection, run_id: int, now: datetime) -> float | None:
    """Seconds from ``now`` until the earliest pending row is due: 0.0 when one is due
    already, None when nothing is pending.

    A row's time is its retry time, else its send time (``due_at``): a retry is always
    scheduled after the row's send time, so the later of the two is the first one set.
    """
    when = sa.func.coalesce(deliveries.c.next_attempt_at, deliveries.c.due_at)
    stmt = sa.select(sa.func.count(), sa.func.count(when), sa.func.min(when)).where(
        deliveries.c.run_id == run_id, deliveries.c.status == "pending")
    total, scheduled, earliest = conn.execute(stmt).one()
    if not total:
        return None
    if total > scheduled or earliest is None:
        return 0.0
    return max(0.0, (utc(earliest) - now).total_seconds())


def per_recipient(conn: sa.Connection, run_id: int) -> dict[str, str]:
    stmt = sa.select(deliveries.c.recipient, deliveries.c.status).where(
        deliveries.c.run_id == run_id)
    return {row[0]: row[1] for row in conn.execute(stmt)}
