"""Next-fire-time tables for the pure schedule maths, DST included (ARCHITECTURE.md, invariant
2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from scheduler.cron import CronExpression, CronSyntaxError
from scheduler.schedules import Schedule, local_datetime
from scheduler.triggers import ScheduleTrigger


def u(text: str) -> datetime:
    """``"2026-01-05 08:00"`` as aware UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


HEL = "Europe/Helsinki"


def day_occurrences(schedule: Schedule, day: str, tz: str) -> list[tuple[datetime, str]]:
    """Every occurrence whose *local* date is ``day``."""
    zone = ZoneInfo(tz)
    start = datetime.fromisoformat(day).replace(tzinfo=zone) - timedelta(days=1)
    out = []
    for occ in schedule.between(start, start + timedelta(days=3)):
        if occ.at.astimezone(zone).date().isoformat() == day:
            out.append((occ.at, occ.slot))
    return out


class TestDst:
    def test_helsinki_0330_once_on_autumn_fold_day(self) -> None:
        # 2026-10-25: 04:00 EEST falls back to 03:00 EET, so 03:30 happens twice locally.
        daily = Schedule(timezone=HEL, cron="30 3 * * *")
        occs = day_occurrences(daily, "2026-10-25", HEL)
        assert occs == [(u("2026-10-25 00:30"), "2026-10-25T03:30:00")]  # the first (EEST)

    def test_helsinki_0330_once_on_spring_gap_day(self) -> None:
        # 2026-03-29: 03:00 EET jumps to 04:00 EEST, so 03:30 does not exist locally.
        daily = Schedule(timezone=HEL, cron="30 3 * * *")
        occs = day_occurrences(daily, "2026-03-29", HEL)
        # Shifted past the gap (04:30 EEST = 01:30 UTC), still one slot for the day.
        assert occs == [(u("2026-03-29 01:30"), "2026-03-29T03:30:00")]

    def test_helsinki_days_around_transitions_fire_once_each(self) -> None:
        daily = Schedule(timezone=HEL, cron="30 3 * * *")
        for start in ("2026-03-25", "2026-10-21"):
            first = datetime.fromisoformat(start).replace(tzinfo=UTC)
            occs = list(daily.between(first, first + timedelta(days=8)))
            slots = [o.slot[:10] for o in occs]
            assert len(slots) == len(set(slots)) == 8
            assert all(b.at > a.at for a, b in pairwise(occs))

    @pytest.mark.parametrize(
        ("after", "expected_utc"),
        [
            ("2026-01-01 00:00", "2026-01-05 08:00"),  # winter: CET = UTC+1
            ("2026-02-24 12:00", "2026-03-02 08:00"),
            ("2026-03-24 12:00", "2026-03-30 07:00"),  # first Monday after spring forward
            ("2026-07-01 00:00", "2026-07-06 07:00"),  # summer: CEST = UTC+2
            ("2026-10-20 00:00", "2026-10-26 08:00"),  # first Monday after fall back
            ("2026-01-05 08:00", "2026-01-12 08:00"),  # strictly after
            ("2026-01-05 07:59", "2026-01-05 08:00"),
        ],
    )
    def test_berlin_weekly_0900(self, after: str, expected_utc: str) -> None:
        weekly = Schedule(timezone="Europe/Berlin", cron="0 9 * * MON")
        occ = weekly.next_after(u(after))
        assert occ is not None
        assert occ.at == u(expected_utc)
        assert occ.slot.endswith("T09:00:00")

    def test_hourly_across_fold_has_unique_slots_and_increasing_instants(self) -> None:
        hourly = Schedule(timezone=HEL, cron="30 * * * *")
        occs = list(hourly.between(u("2026-10-24 20:00"), u("2026-10-25 06:00")))
        slots = [o.slot for o in occs]
        assert len(slots) == len(set(slots))
        assert slots.count("2026-10-25T03:30:00") == 1
        assert all(b.at > a.at for a, b in pairwise(occs))

    def test_local_datetime_in_gap_and_fold(self) -> None:
        assert local_datetime("2026-03-29 03:30", HEL) == u("2026-03-29 01:30")
        assert local_datetime("2026-10-25 03:30", HEL) == u("2026-10-25 00:30")
        assert local_datetime("2026-11-27 10:00", "America/New_York") == u("2026-11-27 15:00")


class TestIntervalAndAt:
    def test_interval_is_anchored_on_start(self) -> None:
        start = u("2026-01-01 00:00:10")
        every = Schedule(interval=timedelta(minutes=5), start=start)
        assert every.next_after(u("2025-12-31 00:00")).at == start  # type: ignore[union-attr]
        assert every.next_after(start).at == start + timedelta(minutes=5)  # type: ignore[union-attr]
        got = [o.at for o in every.between(u("2026-01-01 00:00"), u("2026-01-01 00:16"))]
        assert got == [start + timedelta(minutes=m) for m in (0, 5, 10, 15)]

    def test_interval_without_start_is_aligned(self) -> None:
        every = Schedule(interval=timedelta(minutes=1))
        occ = every.next_after(u("2026-05-05 10:00:30"))
        assert occ is not None and occ.at == u("2026-05-05 10:01")
        assert occ.slot == "2026-05-05T10:01:00Z"

    def test_interval_ignores_dst(self) -> None:
        every = Schedule(timezone=HEL, interval=timedelta(hours=1))
        occs = list(every.between(u("2026-10-24 23:00"), u("2026-10-25 03:00")))
        assert [o.at for o in occs] == [u(f"2026-10-25 0{h}:00") for h in range(4)]

    def test_interval_end(self) -> None:
        every = Schedule(interval=timedelta(hours=1), end=u("2026-01-01 02:00"))
        assert len(list(every.between(u("2026-01-01 00:00"), u("2026-01-02 00:00")))) == 2

    def test_one_off_at(self) -> None:
        once = Schedule(timezone="Europe/Berlin", at=local_datetime("2026-12-01 09:00",
                                                                    "Europe/Berlin"))
        occ = once.next_after(u("2026-11-01 00:00"))
        assert occ is not None and occ.at == u("2026-12-01 08:00")
        assert occ.slot == "2026-12-01T09:00:00"
        assert once.next_after(u("2026-12-01 08:00")) is None

    def test_lead_fires_before_and_keeps_slot(self) -> None:
        at = u("2026-11-27 15:00")
        reminder = Schedule(at=at, lead=timedelta(hours=1))
        occ = reminder.next_after(u("2026-11-27 00:00"))
        assert occ is not None and occ.at == u("2026-11-27 14:00")
        assert reminder.next_after(u("2026-11-27 14:00")) is None

    def test_needs_exactly_one_kind(self) -> None:
        with pytest.raises(ValueError, match="exactly one"):
            Schedule(cron="* * * * *", interval=timedelta(minutes=1))
        with pytest.raises(ValueError, match="exactly one"):
            Schedule()


CRON_TABLE = [
    # (expression, after (UTC), expected next fires (UTC))
    ("*/15 * * * *", "2026-01-01 00:07", ["2026-01-01 00:15", "2026-01-01 00:30"]),
    ("0,30 9-10 * * *", "2026-01-01 08:00",
     ["2026-01-01 09:00", "2026-01-01 09:30", "2026-01-01 10:00", "2026-01-01 10:30",
      "2026-01-02 09:00"]),
    ("5-59/20 * * * *", "2026-01-01 00:00",
     ["2026-01-01 00:05", "2026-01-01 00:25", "2026-01-01 00:45", "2026-01-01 01:05"]),
    ("0 12 * JAN,jul SUN", "2026-01-20 00:00", ["2026-01-25 12:00", "2026-07-05 12:00"]),
    ("0 0 * * MON-FRI", "2026-01-02 01:00", ["2026-01-05 00:00", "2026-01-06 00:00"]),
    ("0 0 * * 7", "2026-01-01 00:00", ["2026-01-04 00:00"]),  # 7 is Sunday too
    ("@daily", "2026-01-01 00:00", ["2026-01-02 00:00", "2026-01-03 00:00"]),
    ("@hourly", "2026-01-01 00:59", ["2026-01-01 01:00"]),
    ("@weekly", "2026-01-01 00:00", ["2026-01-04 00:00"]),
    ("@monthly", "2026-01-15 00:00", ["2026-02-01 00:00", "2026-03-01 00:00"]),
    ("@yearly", "2026-01-15 00:00", ["2027-01-01 00:00"]),
    # day-of-month and day-of-week both restricted: either matches (Vixie cron OR rule)
    ("0 0 13 * FRI", "2026-02-01 00:00",
     ["2026-02-06 00:00", "2026-02-13 00:00", "2026-02-20 00:00", "2026-02-27 00:00",
      "2026-03-06 00:00", "2026-03-13 00:00"]),
    # only one restricted: AND with the wildcard
    ("0 0 31 * *", "2026-01-31 00:00", ["2026-03-31 00:00", "2026-05-31 00:00"]),
    ("0 0 29 2 *", "2026-01-01 00:00", ["2028-02-29 00:00"]),
]


@pytest.mark.parametrize(("expr", "after", "expected"), CRON_TABLE)
def test_cron_table(expr: str, after: str, expected: list[str]) -> None:
    schedule = Schedule(cron=expr)
    got = []
    cursor = u(after)
    for _ in expected:
        occ = schedule.next_after(cursor)
        assert occ is not None
        got.append(occ.at)
        cursor = occ.at
    assert got == [u(e) for e in expected]


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("* * * *", "5 fields"),
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day of week"),
        ("* * * * FUNDAY", "day of week"),
        ("*/0 * * * *", "minute"),
        ("5-1 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        ("@fortnightly", "5 fields"),
    ],
)
def test_cron_syntax_errors_name_the_field(expr: str, field: str) -> None:
    with pytest.raises(CronSyntaxError, match=field):
        CronExpression.parse(expr)


def test_cron_that_never_fires() -> None:
    with pytest.raises(CronSyntaxError, match="never fires"):
        Schedule(cron="0 0 30 2 *").next_after(u("2026-01-01 00:00"))


class TestTrigger:
    def test_first_fire_counts_now(self) -> None:
        trigger = ScheduleTrigger(Schedule(interval=timedelta(minutes=1)))
        now = u("2026-01-01 10:00")
        assert trigger.get_next_fire_time(None, now) == now
        assert trigger.get_next_fire_time(None, now + timedelta(seconds=1)) == u(
            "2026-01-01 10:01")

    def test_next_after_previous_fire(self) -> None:
        trigger = ScheduleTrigger(Schedule(timezone="Europe/Berlin", cron="0 9 * * MON"))
        prev = u("2026-03-23 08:00")
        assert trigger.get_next_fire_time(prev, prev) == u("2026-03-30 07:00")

    def test_fold_once_through_the_trigger(self) -> None:
        trigger = ScheduleTrigger(Schedule(timezone=HEL, cron="30 3 * * *"))
        fires = []
        prev = None
        now = u("2026-10-23 12:00")
        for _ in range(4):
            nxt = trigger.get_next_fire_time(prev, now)
            assert nxt is not None
            fires.append(nxt)
            prev = nxt
        assert fires == [u("2026-10-24 00:30"), u("2026-10-25 00:30"), u("2026-10-26 01:30"),
                         u("2026-10-27 01:30")]

    def test_one_off_in_past_is_none_and_str(self) -> None:
        trigger = ScheduleTrigger(Schedule(at=u("2026-01-01 00:00")))
        assert trigger.get_next_fire_time(None, u("2026-01-02 00:00")) is None
        assert "once at 2026-01-01 00:00" in str(trigger)

    async def test_apscheduler_accepts_the_trigger(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        scheduler = AsyncIOScheduler(timezone="UTC")

        async def noop() -> None:
            return None

        job = scheduler.add_job(noop, ScheduleTrigger(Schedule(cron="0 9 * * *")), id="x")
        scheduler.start(paused=True)
        try:
            assert scheduler.get_job("x") is job
        finally:
            scheduler.shutdown(wait=False)
