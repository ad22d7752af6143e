"""When checks run: first runs spread over the first seconds by name, regular runs on each
check's own phase slot (never more than an interval apart), retries exactly retry_interval."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.guard.hysteresis import Rules, apply, initial
from jobs.guard.runner import Guard
from jobs.guard.timing import FIRST_SPREAD_S, first_due, next_due, phase, slot_at_or_before
from martech.compose import load_config
from scheduler.clock import FakeClock
from scheduler.store.tables import check_results
from tests.conftest import REPO
from tests.http_server import HttpServer
from tests.test_guard_service import CAMPAIGNS, make_ctx, write_config

T0 = datetime(2026, 11, 23, 9, 0, 0, 123456, tzinfo=UTC)
S = timedelta(seconds=1)


def test_phase_is_fixed_per_name_and_spreads_names_evenly() -> None:
    names = [f"c{i:04d}" for i in range(1000)]
    phases = [phase(n) for n in names]
    assert phases == [phase(n) for n in names]  # not the per-process salted hash()
    assert all(0.0 <= p < 1.0 for p in phases)
    tenths: dict[int, int] = defaultdict(int)
    for p in phases:
        tenths[int(p * 10)] += 1
    assert sorted(tenths) == list(range(10))
    assert all(60 <= n <= 140 for n in tenths.values()), tenths


def test_first_run_within_the_start_up_spread() -> None:
    for interval in (2 * S, 10 * S, 30 * S, timedelta(hours=1)):
        spread = min(interval, FIRST_SPREAD_S * S)
        dues = [first_due(f"c{i}", interval, T0) for i in range(200)]
        assert all(T0 <= d < T0 + spread for d in dues)
        assert len(set(dues)) == 200  # not all in the same instant
    assert first_due("website", 30 * S, T0) == first_due("website", 30 * S, T0)


def test_slot_is_the_latest_phase_start_not_after() -> None:
    for name in ("website", "api", "c0001"):
        for interval in (7 * S, 10 * S, 30 * S):
            at = T0
            for _ in range(50):
                slot = slot_at_or_before(name, interval, at)
                assert at - interval < slot <= at
                # On the grid: the next slot is exactly one interval later, same phase.
                assert slot_at_or_before(name, interval, slot + interval) == slot + interval
                assert slot_at_or_before(name, interval, slot + interval - 1e-6 * S) == slot
                at += timedelta(seconds=3.3)
    # Different names, different phases of the same interval.
    slots = {slot_at_or_before(f"c{i}", 10 * S, T0) for i in range(100)}
    assert len(slots) == 100


def test_retry_exactly_retry_interval_regular_runs_on_the_slot() -> None:
    rules = Rules(interval=10 * S, retry_interval=2 * S, failure_threshold=3)
    up = initial("website", T0).with_(verdict="up")
    failing, _ = apply(up, "fail", rules, T0)
    begun = T0 + timedelta(milliseconds=40)  # started a little late
    # On its way to a new verdict: the retry counts from the run's start, not its due time.
    assert next_due("website", failing, rules, T0, begun) == begun + rules.retry_interval
    # Settled: the latest slot no later than one interval after the run.
    settled = next_due("website", up, rules, T0, begun)
    assert begun < settled <= begun + rules.interval
    assert settled == slot_at_or_before("website", rules.interval, settled)
    # Once on its slot, exactly one interval apart: no drift from start lateness.
    after = next_due("website", up, rules, settled, settled + timedelta(milliseconds=300))
    assert after == settled + rules.interval


async def test_guard_spreads_first_runs_and_keeps_every_check_within_its_interval(
        db: Engine, tmp_path: Path) -> None:
    web = await HttpServer().start()
    try:
        names = [f"site-{i:02d}" for i in range(12)]
        checks = "\n".join(f'  {n}: {{http: {{url: "{web.url}/"}}}}' for n in names)
        yaml = ("defaults: {interval: 10s, timeout: 1s, retry_interval: 2s,"
                " failure_threshold: 2, success_threshold: 2}\nchecks:\n" + checks + "\n")
        clock = FakeClock(T0)
        cfg = write_config(tmp_path, yaml, {"digest": CAMPAIGNS["digest"]})
        guard = Guard(make_ctx(db, clock, cfg))
        await guard.start()
        step = timedelta(milliseconds=250)
        while clock.now() < T0 + timedelta(seconds=45):
            await guard.tick()
            clock.advance(step)
        await guard.close()
    finally:
        await web.stop()
    with db.begin() as conn:
        starts: dict[str, list[datetime]] = defaultdict(list)
        for row in conn.execute(sa.select(check_results.c.check_name, check_results.c.at)
                                .order_by(check_results.c.at)):
            starts[row.check_name].append(row.at)
    assert sorted(starts) == names
    firsts = [runs[0] for runs in starts.values()]
    assert all(T0 <= f < T0 + FIRST_SPREAD_S * S + step for f in firsts)
    assert len(set(firsts)) >= 8  # spread, not one burst (fake time moves in 250 ms steps)
    interval = 10 * S
    for name, runs in starts.items():
        # start-up: first run, one retry (success_threshold 2), then on the check's slots
        assert runs[1] - runs[0] == 2 * S
        gaps = [b - a for a, b in itertools.pairwise(runs)]
        assert all(timedelta(0) < g <= interval + step for g in gaps), (name, gaps)
        steady = runs[2:]
        assert len(steady) >= 2
        for a, b in itertools.pairwise(steady):
            assert b - a == interval, (name, runs)
        slot = slot_at_or_before(name, interval, steady[0])
        assert steady[0] - slot < step  # started within one fake-clock step of its slot


def test_example_config_shows_the_website_down_within_30_s() -> None:
    """The example config (``make run``): the website's first run comes within the start-up
    spread, and a dead site is then decided within the pause bound."""
    config = load_config(REPO / "config")
    rules = Rules.of(config.checks.checks["website"], config.checks.defaults)
    first = first_due("website", rules.interval, T0) - T0
    assert first < FIRST_SPREAD_S * S
    assert first + rules.pause_bound() <= 30 * S
