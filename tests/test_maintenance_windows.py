"""Maintenance windows: one-off and recurring (cron + duration, timezone), across DST changes;
campaigns paused ahead with maintenance:<name>, nobody paged, checks keep recording."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.guard.runner import Guard
from jobs.guard.targets import active_span
from scheduler.clock import FakeClock
from scheduler.config.checks import MaintenanceWindow
from scheduler.store.tables import check_results
from tests.http_server import HttpServer
from tests.test_guard_service import (
    alerts,
    checks_yaml,
    make_ctx,
    paused,
    start_guard,
    verdict,
    write_config,
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


WEEKLY = MaintenanceWindow(name="patch", cron="30 2 * * SUN", duration=timedelta(hours=2),
                           timezone="Europe/Berlin")

SPANS = [
    # (now UTC, expected window start UTC or None)
    (utc(2026, 3, 22, 1, 30), utc(2026, 3, 22, 1, 30)),  # winter: 02:30 CET = 01:30 UTC
    (utc(2026, 3, 22, 1, 29), None),
    (utc(2026, 3, 22, 3, 29), utc(2026, 3, 22, 1, 30)),
    (utc(2026, 3, 22, 3, 30), None),  # end is exclusive: duration is elapsed time
    # Spring forward (29 Mar): 02:30 does not exist; shifted by the gap to 03:30 CEST.
    (utc(2026, 3, 29, 0, 45), None),
    (utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 1, 30)),
    (utc(2026, 3, 29, 3, 29), utc(2026, 3, 29, 1, 30)),
    (utc(2026, 3, 29, 3, 30), None),
    (utc(2026, 4, 5, 0, 30), utc(2026, 4, 5, 0, 30)),  # summer: 02:30 CEST = 00:30 UTC
    # Fall back (25 Oct): 02:30 happens twice; the window starts once, at the first.
    (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 0, 30)),
    (utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 0, 30)),  # the second 02:30: same window
    (utc(2026, 10, 25, 2, 30), None),
]


@pytest.mark.parametrize(("now", "start"), SPANS)
def test_recurring_window_across_dst(now: datetime, start: datetime | None) -> None:
    span = active_span(WEEKLY, now)
    assert (span.start if span else None) == start
    if span:
        assert span.end - span.start == timedelta(hours=2)


def test_one_off_window_duration_is_elapsed_time_across_dst() -> None:
    by_duration = MaintenanceWindow(name="db", start="2026-03-29 01:00",
                                    duration=timedelta(hours=4), timezone="Europe/Berlin")
    span = active_span(by_duration, utc(2026, 3, 29, 3, 0))
    assert span is not None
    assert (span.start, span.end) == (utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 4, 0))
    by_end = MaintenanceWindow(name="db", start="2026-03-29 01:00", end="2026-03-29 05:00",
                               timezone="Europe/Berlin")
    span = active_span(by_end, utc(2026, 3, 29, 2, 0))
    assert span is not None and span.end == utc(2026, 3, 29, 3, 0)  # 05:00 CEST
    assert active_span(by_end, utc(2026, 3, 29, 3, 0)) is None


async def test_window_pauses_ahead_nobody_paged_checks_keep_recording(
        db: Engine, tmp_path: Path) -> None:
    web = await HttpServer().start()
    extra = """
        maintenance:
          - {name: db-migration, start: "2026-11-24 22:00", duration: 2h,
             timezone: Europe/Berlin, pauses: {tags: [newsletter], names: [posts]}}
    """
    t0 = utc(2026, 11, 24, 20, 55)  # 21:55 Berlin
    clock = FakeClock(t0)
    ctx = make_ctx(db, clock, write_config(tmp_path, checks_yaml(web.url, extra)))
    guard = Guard(ctx)
    await start_guard(guard, clock)
    await guard.tick()
    clock.advance(timedelta(seconds=30))
    await guard.tick()
    assert paused(db) == {} and verdict(db) == "up"

    clock.set(utc(2026, 11, 24, 21, 0))  # 22:00 Berlin: the window opens
    await guard.tick()
    # Paused ahead, before anything failed; pulse (tag product) is not covered.
    assert paused(db) == {"digest": ["maintenance:db-migration"],
                          "posts": ["maintenance:db-migration"]}
    started = [r.payload for r in alerts(db)]
    assert len(started) == 2  # email + slack; the json route only wants "down"
    assert started[0]["subject"] == (
        "[martech] MAINTENANCE STARTED: db-migration — 2 campaign(s) paused")
    assert "Window ends: 2026-11-24 23:00:00 UTC" in started[0]["text"]

    # The site goes down during the work: verdict and guard pause are recorded, nobody paged.
    await web.stop()
    for i in range(1, 4):
        clock.set(utc(2026, 11, 24, 21, 10) + timedelta(seconds=5 * i))
        await guard.tick()
    assert verdict(db) == "down"
    assert paused(db) == {"digest": ["maintenance:db-migration", "guard:website"],
                          "posts": ["maintenance:db-migration", "guard:website"]}
    assert len(alerts(db)) == 2  # no DOWN page: everything it guards is in maintenance
    with ctx.begin() as conn:
        recorded = conn.execute(sa.select(sa.func.count()).select_from(check_results)).scalar()
    assert recorded == 6  # 3 ok, 3 failed: checks kept running and recording

    # The window ends with the site still down: the guard's own reason keeps them paused.
    clock.set(utc(2026, 11, 24, 23, 0))
    await guard.tick()
    assert paused(db) == {"digest": ["guard:website"], "posts": ["guard:website"]}
    subjects = [r.payload.get("subject") for r in alerts(db)]
    ended = alerts(db)[subjects.index("[martech] MAINTENANCE ENDED: db-migration")].payload
    # Still down once the window is over: now IT is paged (a reminder of the silent DOWN).
    assert any(s and s.startswith("[martech] STILL DOWN: website") for s in subjects)
    assert "digest: guard:website" in ended["text"]
    # The site comes back: the guard resumes them, and that is paged as usual.
    await web.start()
    for i in range(2):
        clock.set(utc(2026, 11, 24, 23, 1) + timedelta(seconds=5 * i))
        await guard.tick()
    assert paused(db) == {}
    assert alerts(db)[-2].payload["subject"] == "[martech] UP: website — 2 campaign(s) resumed"
    await guard.close()
    await web.stop()
