"""Delivery claims: leases judged by the database's clock, fencing tokens, adoption, the
bounded window of doubt (ARCHITECTURE.md, invariants 3 and 8; issue 9, points 1 and 4).

A test cannot move the database server's clock, so "the lease ran out" is written the way it
looks in the database once it has: the claim's ``expires_at`` in the past.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobs.newsletter import claims, ledger
from jobs.newsletter.wire import WireBook
from scheduler.delivery.base import SendOutcome
from scheduler.delivery.ratelimit import RateLimiter
from scheduler.store.dbclock import db_now
from scheduler.store.tables import deliveries, delivery_claims
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config

RECIPIENTS = [f"l{i:02d}@example.com" for i in range(40)]
POLICY = ledger.Policy("at_most_once", max_attempts=3, backoff=timedelta(seconds=1))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _setup(tmp_path: Path, db_url: str, t0: datetime, **settings: Any) -> tuple[Any, int]:
    write_config(tmp_path, rows=RECIPIENTS)
    ctx = context_for(settings_for(tmp_path, db_url, **settings))
    run_id = claim_run(ctx, t0)
    with ctx.begin() as conn:
        ledger.materialise(conn, run_id, [(r, {}) for r in RECIPIENTS])
    return ctx, run_id


def _claim(ctx: Any, run_id: int, limit: int, node: str) -> claims.Claim:
    with ctx.begin() as conn:
        step = claims.claim_batch(conn, run_id, limit, node=node, clock=ctx.clock,
                                  settings=ctx.settings, connections=2,
                                  limiter=RateLimiter("x", rate_per_s=None, rate_per_h=None))
    assert step.claim is not None
    return step.claim


def _rows(ctx: Any, run_id: int) -> dict[str, tuple[str, bool, int | None]]:
    with ctx.begin() as conn:
        return {r.recipient: (r.status, r.on_wire, r.claim_id) for r in conn.execute(
            sa.select(deliveries.c.recipient, deliveries.c.status, deliveries.c.on_wire,
                      deliveries.c.claim_id).where(deliveries.c.run_id == run_id))}


def _expire(ctx: Any, token: int) -> None:
    with ctx.begin() as conn:
        conn.execute(sa.update(delivery_claims).where(delivery_claims.c.id == token)
                     .values(expires_at=db_now(conn) - timedelta(seconds=1)))


def test_claims_are_disjoint_and_carry_a_lease_by_the_database_clock(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    ctx, run_id = _setup(tmp_path, db_url, t0, delivery_lease_s=7)
    a = _claim(ctx, run_id, 10, "node-a")
    b = _claim(ctx, run_id, 10, "node-b")
    assert a.token != b.token
    assert not {r.id for r in a.rows} & {r.id for r in b.rows}
    with ctx.begin() as conn:
        now = db_now(conn)
        row = conn.execute(sa.select(delivery_claims).where(
            delivery_claims.c.id == a.token)).one()
    assert (row.node, row.pid, row.rows) == ("node-a", os.getpid(), 10)
    expires_in = (row.expires_at - now).total_seconds()
    assert 5 < expires_in <= 7.5  # the lease, from the database's now
    # Sized to the batch's worst case: 5 messages per connection, each meeting every timeout.
    per_message_s = 5 * ctx.settings.smtp_timeout_s + 2 * ctx.settings.smtp_connect_timeout_s
    assert (row.deadline - row.claimed_at).total_seconds() == pytest.approx(5 * per_message_s + 7)
    ctx.db.dispose()


def test_renewal_moves_the_lease_but_never_past_the_deadline(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    ctx, run_id = _setup(tmp_path, db_url, t0, delivery_lease_s=5)
    claim = _claim(ctx, run_id, 4, "node-a")
    with ctx.begin() as conn:
        row = conn.execute(sa.select(delivery_claims).where(
            delivery_claims.c.id == claim.token)).one()
        assert claims.renew(conn, claim.token, row.claimed_at + timedelta(seconds=3), 5)
        renewed = conn.execute(sa.select(delivery_claims.c.expires_at).where(
            delivery_claims.c.id == claim.token)).scalar_one()
        assert renewed == row.claimed_at + timedelta(seconds=8)
        assert claims.renew(conn, claim.token, row.deadline, 5)  # overran its worst case
        capped = conn.execute(sa.select(delivery_claims.c.expires_at).where(
            delivery_claims.c.id == claim.token)).scalar_one()
        assert capped == row.deadline
        conn.execute(sa.delete(delivery_claims).where(delivery_claims.c.id == claim.token))
        assert not claims.renew(conn, claim.token, row.claimed_at, 5)  # adopted: gone
    ctx.db.dispose()


def test_who_may_adopt_a_claim(tmp_path: Path, db_url: str, t0: datetime) -> None:
    """Expired by the database's clock: anyone. This host's dead process, or a claim this
    process gave up: at once. A live claim, or another host's pid: only once expired."""
    ctx, run_id = _setup(tmp_path, db_url, t0)
    cases = {  # holder node, pid, expired?, abandoned?, adopted?
        "expired-elsewhere": ("node-x", 4242, True, False, True),
        "live-elsewhere": ("node-y", 4242, False, False, False),
        "dead-here": ("test-node", _dead_pid(), False, False, True),
        "dead-cli-here": ("test-node:cli:0", _dead_pid(), False, False, True),
        "live-cli-here": (claims.cli_node_name("test-node"), os.getpid(), False, False, False),
        "dead-pid-other-host": ("other-host:cli:1", _dead_pid(), False, False, False),
        "given-up-here": ("test-node", os.getpid(), False, True, True),
    }
    made: dict[str, claims.Claim] = {}
    for name, (node, pid, expired, abandoned, _adopt) in cases.items():
        claim = _claim(ctx, run_id, 2, node)
        with ctx.begin() as conn:
            conn.execute(sa.update(delivery_claims).where(delivery_claims.c.id == claim.token)
                         .values(pid=pid))
            ledger.mark_on_wire(conn, claim.token, [claim.rows[0].id])  # one row crossed
        if expired:
            _expire(ctx, claim.token)
        if abandoned:
            claims.abandon(claim.token)
        made[name] = claim
    with ctx.begin() as conn:  # a row left `sending` before leases existed: in doubt
        conn.execute(sa.update(deliveries).where(deliveries.c.recipient == RECIPIENTS[-1])
                     .values(status="sending", attempts=1))
    with ctx.begin() as conn:
        adopted = claims.adopt(conn, run_id, "at_most_once", node="test-node", now=db_now(conn))
    rows = _rows(ctx, run_id)
    for name, (*_x, should) in cases.items():
        crossed, untouched = made[name].rows
        expected = (("unknown", "pending") if should else ("sending", "sending"))
        assert (rows[crossed.recipient][0], rows[untouched.recipient][0]) == expected, name
    assert rows[RECIPIENTS[-1]][0] == "unknown"
    assert adopted.claims == 4 and adopted.in_doubt == 5 and adopted.released == 4
    with ctx.begin() as conn:
        left = set(conn.execute(sa.select(delivery_claims.c.node)).scalars())
    assert left == {"node-y", claims.cli_node_name("test-node"), "other-host:cli:1"}
    ctx.db.dispose()


async def test_late_writes_of_an_adopted_claim_are_refused_and_logged(
        tmp_path: Path, db_url: str, t0: datetime, caplog: pytest.LogCaptureFixture) -> None:
    ctx, run_id = _setup(tmp_path, db_url, t0)
    claim = _claim(ctx, run_id, 6, "node-a")
    book = WireBook(ctx, claim, campaign="news", policy=POLICY, window=4).start()
    first, second, *rest = claim.rows
    assert await book.cross(first) and await book.cross(second)  # on the wire
    book.done(first, SendOutcome(ok=True, code=250, data_sent=True))
    while _rows(ctx, run_id)[first.recipient][0] != "sent":  # the group commit lands
        await asyncio.sleep(0.01)
    _expire(ctx, claim.token)  # ... the sender stalls past its lease ...
    with ctx.begin() as conn:
        adopted = claims.adopt(conn, run_id, "at_most_once", node="node-b", now=db_now(conn))
    assert adopted.claims == 1
    caplog.set_level(logging.WARNING, "martech.newsletter")
    # ... and wakes up: its outcome for `second` and any further crossing are refused.
    book.done(second, SendOutcome(ok=True, code=250, data_sent=True))
    assert not await book.cross(rest[0])
    tally = await book.close()
    assert book.fenced and tally.sent == 1 and book.refused == 1
    rows = _rows(ctx, run_id)
    assert rows[first.recipient][0] == "sent"  # recorded before the adoption: stands
    assert rows[second.recipient][0] == "unknown"  # the adopter's verdict, not overwritten
    assert {rows[r.recipient][0] for r in rest} == {"pending"}
    assert any("late writes refused" in r.getMessage() for r in caplog.records)
    ctx.db.dispose()


async def test_never_more_rows_in_doubt_than_the_window(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    """Marks are granted only while marked-and-unrecorded rows stay within the window, the
    outcomes recorded by the same commit included: a kill can leave no more in doubt."""
    ctx, run_id = _setup(tmp_path, db_url, t0)
    claim = _claim(ctx, run_id, 12, "node-a")
    book = WireBook(ctx, claim, campaign="news", policy=POLICY, window=4).start()
    crossing = [asyncio.create_task(book.cross(row)) for row in claim.rows]

    def on_wire() -> set[str]:
        return {r for r, (status, wire, _c) in _rows(ctx, run_id).items()
                if status == "sending" and wire}

    async def settled(count: int) -> None:
        while sum(t.done() for t in crossing) < count:
            await asyncio.sleep(0.01)  # the commit task is real work, not time passing
        await asyncio.sleep(0.05)

    await settled(4)
    assert len(on_wire()) == 4 and sum(t.done() for t in crossing) == 4
    for row in claim.rows[:3]:
        book.done(row, SendOutcome(ok=True, code=250, data_sent=True))
    await settled(7)
    assert len(on_wire()) == 4  # 3 recorded, 3 more granted in the same commit
    for row in claim.rows[3:]:
        book.done(row, SendOutcome(ok=False, error="connection lost", data_sent=False))
    await book.close()
    assert all(t.done() for t in crossing)
    statuses = {s for s, _w, _c in _rows(ctx, run_id).values()}
    assert statuses == {"sent", "pending"}
    with ctx.begin() as conn:  # the lease ended with the batch
        assert conn.execute(sa.select(sa.func.count()).select_from(delivery_claims)
                            ).scalar() == 0
    ctx.db.dispose()
