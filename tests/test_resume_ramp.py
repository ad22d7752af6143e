"""A gentle resume: after a long pause the rate climbs from a fraction to full (injected clock)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from jobs.newsletter.prepare import prepare
from jobs.newsletter.send import Sender
from scheduler.clock import FakeClock
from scheduler.delivery.base import SendOutcome
from scheduler.delivery.ramp import Ramp
from scheduler.delivery.ratelimit import RateLimiter, TokenBucket
from scheduler.store import pauses
from scheduler.store.pause_history import last_pause
from scheduler.store.tables import tracking_events
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config


class _NoTransport:
    name = "none"

    async def send(self, message: object) -> SendOutcome:
        raise AssertionError("nothing is sent in these tests")

    async def close(self) -> None:
        return None


def _sent_per_minute(limiter: RateLimiter, clock: FakeClock, minutes: int) -> list[int]:
    """Drive the limiter as the sender does (reserve a batch, wait, take) for ``minutes``."""
    counts = []
    for _ in range(minutes):
        end = clock.now() + timedelta(minutes=1)
        sent = 0
        while clock.now() < end:
            batch = limiter.max_batch(100, clock.now())
            wait = limiter.wait_s(batch, clock.now())
            if wait > 0:
                clock.advance(max(0.001, min(wait, (end - clock.now()).total_seconds())))
                continue
            limiter.take(batch, clock.now())
            sent += batch
        counts.append(sent)
    return counts


def test_limiter_climbs_linearly_and_no_burst_from_a_full_bucket(t0: datetime) -> None:
    clock = FakeClock(t0)
    limiter = RateLimiter("c", rate_per_s=10, rate_per_h=None)
    limiter.set_ramp(Ramp(t0, timedelta(minutes=10), 0.1))
    limiter.buckets = [TokenBucket("c:per_s", 10, 1.0, 10, t0)]  # full after a long pause
    counts = _sent_per_minute(limiter, clock, 12)
    assert counts[0] <= 0.2 * 600  # ~10% → ~19%: nowhere near the full 600/min
    assert all(a <= b + 2 for a, b in itertools.pairwise(counts))  # climbing
    assert counts[-1] >= 590  # full rate once the ramp is over
    assert abs(counts[4] - 600 * (0.1 + 0.9 * 4.5 / 10)) < 40  # linear in between


def test_ramp_factor_is_a_pure_function_of_time(t0: datetime) -> None:
    ramp = Ramp(t0, timedelta(hours=2), 0.25)
    assert ramp.factor(t0) == 0.25
    assert ramp.factor(t0 + timedelta(hours=1)) == 0.625
    assert ramp.factor(t0 + timedelta(hours=3)) == 1.0


async def test_sender_ramps_after_a_long_pause_and_reports_it(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=[f"u{i}@example.com" for i in range(50)],
                 send={"rate_per_s": 20, "batch_size": 50,
                       "ramp": {"after": "6h", "over": "1h", "start": 0.1}})
    clock = FakeClock(t0)
    ctx = context_for(settings_for(tmp_path, db_url))
    ctx.clock = clock
    with ctx.begin() as conn:
        # Overlapping reasons: the span runs from the first added to the last removed.
        pauses.add(conn, "news", pauses.guard_reason("website"), t0)
        pauses.add(conn, "news", pauses.MANUAL, t0 + timedelta(hours=1))
        pauses.remove(conn, "news", pauses.guard_reason("website"), t0 + timedelta(hours=7))
        pauses.remove(conn, "news", pauses.MANUAL, t0 + timedelta(hours=8))
        span = last_pause(conn, "news")
    assert span is not None and (span.start, span.end) == (t0, t0 + timedelta(hours=8))
    clock.set(t0 + timedelta(hours=8, minutes=30))  # half-way up the ramp
    run_id = claim_run(ctx, clock.now())
    campaign = ctx.config.campaigns["news"]
    sender = Sender(ctx, prepare(campaign, ctx.config, ctx.settings, run_id=run_id), run_id,
                    _NoTransport())
    sender.stats = sender.materialise()
    sender._start()
    assert sender.limiter.max_batch(50, clock.now()) == 11  # 20/s at 55%
    assert sender.stats["ramp"]["until"] == (t0 + timedelta(hours=9)).isoformat()
    sender._start()  # a restart does not record the same ramp twice
    with ctx.begin() as conn:
        events = conn.execute(sa.select(tracking_events.c.detail).where(
            tracking_events.c.kind == "ramp")).scalars().all()
    assert len(events) == 1 and "10% of the rate" in events[0]
    clock.set(t0 + timedelta(hours=9, minutes=1))
    sender._start()
    assert sender.limiter.max_batch(50, clock.now()) == 20  # the ramp is over
    ctx.db.dispose()


async def test_short_pause_or_disabled_ramp_sends_at_full_rate(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=["a@example.com"], send={"rate_per_s": 20, "batch_size": 50})
    clock = FakeClock(t0)
    ctx = context_for(settings_for(tmp_path, db_url))
    ctx.clock = clock
    with ctx.begin() as conn:
        pauses.add(conn, "news", pauses.MANUAL, t0)
        pauses.remove(conn, "news", pauses.MANUAL, t0 + timedelta(hours=1))  # < 6h default
    clock.set(t0 + timedelta(hours=1, minutes=1))
    run_id = claim_run(ctx, clock.now())
    sender = Sender(ctx, prepare(ctx.config.campaigns["news"], ctx.config, ctx.settings,
                                 run_id=run_id), run_id, _NoTransport())
    sender.stats = sender.materialise()
    sender._start()
    assert sender.limiter.ramp is None and "ramp" not in sender.stats
    assert sender.limiter.max_batch(50, clock.now()) == 20
    ctx.db.dispose()
