"""Token buckets are the campaign's (shared by its senders) and survive a restart; tokens for
links verify only for their purpose."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.newsletter.kind import send_run
from scheduler.delivery.ratelimit import RateLimiter
from scheduler.delivery.tokens import Signer, UnsubscribeRef, unsubscribe_token, verify_unsubscribe
from scheduler.store.tables import deliveries
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
from tests.smtp_server import RecordingHandler, SmtpServer


def test_rate_buckets_are_shared_and_persist_across_restarts(db: Engine, t0: datetime) -> None:
    limiter = RateLimiter("newsletter:x", rate_per_s=10, rate_per_h=100)
    assert limiter.max_batch(200) == 10
    with db.begin() as conn:
        assert limiter.reserve(conn, 10, t0) == 0  # a full bucket to start with
    other = RateLimiter("newsletter:x", rate_per_s=10, rate_per_h=100)  # another sender
    with db.begin() as conn:
        assert other.reserve(conn, 10, t0) == 1.0  # the same bucket: empty for a second
        assert other.reserve(conn, 5, t0 + timedelta(seconds=0.5)) == 0
    restarted = RateLimiter("newsletter:x", rate_per_s=10, rate_per_h=100)
    with db.begin() as conn:  # a restart hands out no fresh burst
        assert restarted.reserve(conn, 10, t0 + timedelta(seconds=0.5)) == 1.0
    for second in range(1, 9):  # the hourly bucket: 85 left, 80 more taken over 8 seconds
        with db.begin() as conn:
            assert restarted.reserve(conn, 10, t0 + timedelta(seconds=second + 0.5)) == 0
    with db.begin() as conn:
        wait = restarted.reserve(conn, 10, t0 + timedelta(seconds=10))
    assert 160 < wait < 180  # ~4.7 tokens missing at 100/h: about three minutes


async def test_two_senders_of_one_campaign_stay_within_its_rate(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    """Issue 9, point 4h: the bucket is the campaign's, not a sender's. Two senders on two
    nodes take turns at it; together they send at the campaign's rate, not twice it."""
    rate, total, batch = 50, 200, 10
    recipients = [f"r{i:03d}@example.com" for i in range(total)]
    write_config(tmp_path, rows=recipients, send={"rate_per_s": rate, "batch_size": batch})
    arrivals: list[float] = []

    class Timed(RecordingHandler):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            arrivals.append(time.monotonic())
            return await super().handle_DATA(server, session, envelope)

    with SmtpServer(Timed()) as server:
        a = context_for(settings_for(tmp_path, db_url, port=server.port, node_name="node-a"))
        b = context_for(settings_for(tmp_path, db_url, port=server.port, node_name="node-b"))
        run_id = claim_run(a, t0)
        campaign = a.config.campaigns["news"]
        a.stopping.set()  # materialise only, so both start on a full list
        await send_run(a, campaign, run_id, on_pause="return")
        a.stopping.clear()
        done = await asyncio.gather(send_run(a, campaign, run_id, on_pause="return"),
                                    send_run(b, campaign, run_id, on_pause="return", helper=True))
        received = server.per_recipient()
    assert done[0].status == "done"
    assert received == {r: 1 for r in recipients}
    with a.begin() as conn:
        stmt = (sa.select(deliveries.c.claimed_by, sa.func.count())
                .group_by(deliveries.c.claimed_by))
        shares: dict[str, int] = dict(conn.execute(stmt).all())
    assert set(shares) == {"node-a", "node-b"}  # both sent
    # One bucket of `rate` tokens refilled at `rate`/s: between any two arrivals, at most
    # rate + rate x their distance, give or take one batch per sender (a batch's tokens are
    # taken before its messages go out, so arrivals lag their reservations). Two buckets (one
    # per sender) would let twice as many through.
    times = sorted(arrivals)
    slack = 2 * batch
    for i, start in enumerate(times):
        for j in range(i + rate + slack, len(times)):
            assert j - i + 1 <= rate + rate * (times[j] - start) + slack, (i, j)
    assert times[-1] - times[0] >= (total - rate - slack) / rate
    for ctx in (a, b):
        ctx.db.dispose()


def test_unsubscribe_tokens_are_signed_and_purpose_bound() -> None:
    signer = Signer("secret")
    token = unsubscribe_token(signer, 42)
    assert verify_unsubscribe(signer, token) == UnsubscribeRef(delivery_id=42)
    assert verify_unsubscribe(Signer("other"), token) is None
    assert verify_unsubscribe(signer, token[:-2] + ("AA" if token[-2:] != "AA" else "BA")) is None
    assert signer.verify("click", token) is None
    assert verify_unsubscribe(signer, "garbage") is None
