"""Delivery claims: leases with fencing tokens, judged by the database's clock (ARCHITECTURE.md,
invariant 8; issue 9, point 4).

A sender claims a batch of pending rows in one transaction (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so senders on every node take disjoint batches): it inserts a ``delivery_claims``
row — its id is the batch's fencing token — and marks the rows ``sending`` under it. The same
transaction drops rows suppressed since materialisation and takes the batch's tokens from the
campaign's shared rate bucket.

The claim row is the lease. It expires ``lease_s`` after it was last renewed and is renewed
while the batch is worked, never past its ``deadline`` (the batch's worst case: every message
hitting every SMTP timeout). Every write the holder makes first locks its claim row
(:func:`hold`); adopting a claim deletes that row. So of a late holder and an adopter only one
can win, whatever their clocks say: a holder whose claim was adopted has its writes refused.

Who may adopt a claim: anyone, once it expired by the database's clock (never a comparison of
two machines' clocks); at once, a claim of this host whose process is gone (same base node
name, its pid no longer exists — a killed ``martech send --now`` or a restarted service), or one
this process gave up on (:func:`abandon`). Liveness only: safety never depends on it, the
fencing does.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from jobs.newsletter import ledger
from scheduler.clock import Clock, utc
from scheduler.delivery.ratelimit import RateLimiter
from scheduler.settings import Settings
from scheduler.store import heartbeats, suppressions
from scheduler.store.dbclock import DbTime
from scheduler.store.tables import delivery_claims, node_heartbeats

log = logging.getLogger("martech.newsletter")

SENDER_ROLE = "sender"
RENEWALS_PER_LEASE = 3  # renewed every lease_s / 3: two renewals may fail before it expires

_CLI = re.compile(r"^(?P<base>.*):cli:(?P<pid>\d+)$")
_ABANDONED: set[int] = set()  # tokens whose holder in this process gave up


# -- node names ----------------------------------------------------------------------------

def cli_node_name(node_name: str, pid: int | None = None) -> str:
    """The node name of a CLI process: distinct from the service's and from other CLIs'."""
    return f"{base_node(node_name)}:cli:{os.getpid() if pid is None else pid}"


def base_node(node_name: str) -> str:
    match = _CLI.match(node_name)
    return match["base"] if match else node_name


def cli_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"node_name": cli_node_name(settings.node_name)})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# -- leases --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LeaseTerms:
    lease_s: float
    worst_case_s: float

    @classmethod
    def for_batch(cls, settings: Settings, rows: int, connections: int) -> LeaseTerms:
        """A batch's worst case: on each connection, its share of messages, each meeting
        every SMTP timeout and a reconnect. Its tokens were taken before the claim, so the
        rate limit adds nothing; the lease itself is short and renewed."""
        per_message_s = 5 * settings.smtp_timeout_s + 2 * settings.smtp_connect_timeout_s
        rounds = math.ceil(rows / max(1, connections))
        lease_s = settings.delivery_lease_s
        return cls(lease_s, rounds * per_message_s + lease_s)


@dataclass
class Claim:
    token: int
    run_id: int
    rows: list[ledger.DeliveryRow]
    terms: LeaseTerms
    db_time: DbTime  # the database's clock at the claim, carried by the monotonic clock


@dataclass
class ClaimStep:
    """What one claim attempt did: a batch, a wait for the rate limit, or nothing."""

    claim: Claim | None = None
    wait_s: float = 0.0
    suppressed: int = 0
    rows: list[ledger.DeliveryRow] = field(default_factory=list)
    contended: bool = False  # came back short: rows left were locked by another claimer


def claim_batch(conn: sa.Connection, run_id: int, limit: int, *, node: str, clock: Clock,
                settings: Settings, connections: int, limiter: RateLimiter) -> ClaimStep:
    """Claim up to ``limit`` due rows of the run (see the module docstring). Leases and the
    rate bucket go by the database's clock; which rows are due, by ``clock``
    (``ledger.due_pending``)."""
    db_time = DbTime.read(conn, clock)
    now, due_now = db_time.at, clock.now()
    rows = ledger.candidates(conn, run_id, limit, due_now)
    # SKIP LOCKED came back short while due rows remain: another node is claiming them (only
    # counted, for `bench/cluster.py`'s claim conflicts; SQLite has a single writer).
    contended = (len(rows) < limit and conn.dialect.name == "postgresql"
                 and ledger.due_count(conn, run_id, due_now) > len(rows))
    if not rows:
        return ClaimStep(contended=contended)
    gone = suppressions.suppressed_among(conn, [r.recipient for r in rows])
    ledger.suppress(conn, [r.id for r in rows if r.recipient in gone])
    rows = [r for r in rows if r.recipient not in gone]
    step = ClaimStep(suppressed=len(gone), contended=contended)
    if not rows:
        return step
    step.wait_s = limiter.reserve(conn, len(rows), now)
    if step.wait_s > 0:
        return step  # the suppressed rows are committed; the others stay pending
    terms = LeaseTerms.for_batch(settings, len(rows), connections)
    deadline = now + timedelta(seconds=terms.worst_case_s)
    token = conn.execute(sa.insert(delivery_claims).values(
        run_id=run_id, node=node, pid=os.getpid(), rows=len(rows), claimed_at=now,
        expires_at=min(deadline, now + timedelta(seconds=terms.lease_s)), deadline=deadline,
    ).returning(delivery_claims.c.id)).scalar_one()
    taken = ledger.take(conn, rows, token, node, now)
    step.claim = Claim(token, run_id, taken, terms, db_time)
    step.rows = taken
    return step


_HOLD = sa.select(delivery_claims.c.id).where(delivery_claims.c.id == sa.bindparam("token"))
_HOLD_LOCKED = _HOLD.with_for_update()
_FINISH = sa.delete(delivery_claims).where(delivery_claims.c.id == sa.bindparam("token"))


def hold(conn: sa.Connection, token: int) -> bool:
    """Lock our claim row for this transaction: False when it was adopted (fenced)."""
    stmt = _HOLD_LOCKED if conn.dialect.name == "postgresql" else _HOLD
    return conn.execute(stmt, {"token": token}).first() is not None


def renew(conn: sa.Connection, token: int, now: datetime, lease_s: float) -> bool:
    """Extend the lease to ``now + lease_s`` (the database's clock), never past its deadline.

    A claim that expired but was not adopted yet is still ours: renewing it is safe, since an
    adopter must delete the row first. False when it is gone.
    """
    wanted = now + timedelta(seconds=lease_s)
    stmt = (sa.update(delivery_claims).where(delivery_claims.c.id == token)
            .values(expires_at=sa.case((delivery_claims.c.deadline < wanted,
                                        delivery_claims.c.deadline), else_=wanted))
            .returning(delivery_claims.c.id))
    return conn.execute(stmt).first() is not None


def finish(conn: sa.Connection, token: int) -> None:
    """Every outcome of the batch is recorded: the lease ends."""
    conn.execute(_FINISH, {"token": token})
    _ABANDONED.discard(token)


def abandon(token: int) -> None:
    """This process gave the batch up (its outcomes could not be recorded): any sender here
    may adopt it at once instead of waiting for the lease to run out."""
    _ABANDONED.add(token)


def _adoptable(token: int, holder: str, pid: int, expires_at: datetime, *, now: datetime,
               node: str) -> bool:
    if expires_at < now:
        return True
    if base_node(holder) != base_node(node):
        return False  # another host's pid means nothing here: only its lease speaks
    if pid == os.getpid():
        return token in _ABANDONED
    return not _pid_alive(pid)


@dataclass
class Adopted:
    claims: int = 0
    in_doubt: int = 0
    released: int = 0


def adopt(conn: sa.Connection, run_id: int, policy: str, *, node: str, now: datetime
          ) -> Adopted:
    """Take over the run's dead claims (and ``sending`` rows no claim holds): their
    ``on_wire`` rows by ``policy``, the rest back to ``pending``."""
    found = Adopted()
    rows = conn.execute(sa.select(delivery_claims.c.id, delivery_claims.c.node,
                                  delivery_claims.c.pid, delivery_claims.c.expires_at)
                        .where(delivery_claims.c.run_id == run_id)).all()
    for row in rows:
        expires_at = utc(row.expires_at)
        if not _adoptable(row.id, row.node, row.pid, expires_at, now=now, node=node):
            continue
        if not _lock_for_adoption(conn, row.id, judged_by_lease=expires_at < now, now=now):
            continue
        conn.execute(sa.delete(delivery_claims).where(delivery_claims.c.id == row.id))
        doubt, released = ledger.resolve(conn, run_id, policy, token=row.id)
        _ABANDONED.discard(row.id)
        found.claims += 1
        found.in_doubt += doubt
        found.released += released
        log.warning("adopted an expired delivery claim of node %s: %d in doubt, %d back to "
                    "pending", row.node, doubt, released,
                    extra={"action": "adopt_claim", "run_id": run_id, "claim": row.id,
                           "from_node": row.node, "in_doubt": doubt, "released": released})
    doubt, released = ledger.resolve(conn, run_id, policy, orphans=True)
    found.in_doubt += doubt
    found.released += released
    return found


def _lock_for_adoption(conn: sa.Connection, token: int, *, judged_by_lease: bool,
                       now: datetime) -> bool:
    """Lock the claim row to delete it. A lease judged expired is re-checked under the lock
    (a renewal may have landed since it was read); a row locked by its holder's commit or
    another adopter is skipped, not waited for: a holder stopped mid-transaction must not
    stall the live nodes (SQLite's BEGIN IMMEDIATE already made us the only writer)."""
    stmt = sa.select(delivery_claims.c.id).where(delivery_claims.c.id == token)
    if judged_by_lease:
        stmt = stmt.where(delivery_claims.c.expires_at < now)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return conn.execute(stmt).first() is not None


# -- CLI heartbeats (the engine's run adoption reads them) ---------------------------------

def beat(conn: sa.Connection, node: str, now: datetime) -> None:
    """A CLI sender's heartbeat, so the service (and other nodes) see it alive."""
    heartbeats.beat(conn, node, SENDER_ROLE, now)


def forget(conn: sa.Connection, node: str) -> None:
    conn.execute(sa.delete(node_heartbeats).where(node_heartbeats.c.node == node,
                                                  node_heartbeats.c.role == SENDER_ROLE))


def prune_dead_cli(conn: sa.Connection, node: str) -> int:
    """Forget the heartbeats of this host's killed CLI senders (they cannot clean up)."""
    here = base_node(node)
    names = conn.execute(sa.select(node_heartbeats.c.node).where(
        node_heartbeats.c.role == SENDER_ROLE)).scalars().all()
    dead = [n for n in names if (m := _CLI.match(n)) and m["base"] == here
            and not _pid_alive(int(m["pid"]))]
    for name in dead:
        forget(conn, name)
    return len(dead)
