"""Cron's own rules (Debian cron, via cronsim) and our local-slot DST policy, as tables.

Each row: expression, timezone, "after" instant (UTC), the next fires (UTC) in order.
Calendar notes: 2026-01-01 is a Thursday; in Europe/Helsinki 2026-03-29 03:00-04:00 does not
exist (EET -> EEST) and 2026-10-25 03:00-04:00 happens twice (EEST -> EET).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from scheduler.config.base import ScheduleConfig
from scheduler.cron import CronExpression, CronSyntaxError


def u(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expr: str, tz: str, after: str, count: int) -> list[datetime]:
    """The next ``count`` fires strictly after ``after``, each one after the previous."""
    cron, zone, cursor, out = CronExpression.parse(expr), ZoneInfo(tz), u(after), []
    for _ in range(count):
        cursor, _slot = cron.next_slot(cursor, zone)
        out.append(cursor)
    return out


HEL = "Europe/Helsinki"

RULES = [
    # A day field starting with "*" is no restriction: */2 (odd days) AND Monday.
    pytest.param("0 9 */2 * MON", "UTC", "2026-01-01 00:00",
                 ["2026-01-05 09:00", "2026-01-19 09:00", "2026-02-09 09:00",
                  "2026-02-23 09:00"], id="step-dom-and-weekday"),
    pytest.param("0 9 */2 * MON", "Europe/Berlin", "2026-01-01 00:00",
                 ["2026-01-05 08:00", "2026-01-19 08:00"], id="step-dom-and-weekday-berlin"),
    # The same on the weekday side: 1st/15th AND Sun/Wed/Sat (*/3 = 0,3,6).
    pytest.param("0 9 1,15 * */3", "UTC", "2026-01-01 00:00",
                 ["2026-02-01 09:00", "2026-02-15 09:00", "2026-03-01 09:00"],
                 id="dom-and-step-weekday"),
    # Both restricted: either matches (1st, 15th OR any Monday).
    pytest.param("0 9 1,15 * MON", "UTC", "2026-01-01 00:00",
                 ["2026-01-01 09:00", "2026-01-05 09:00", "2026-01-12 09:00",
                  "2026-01-15 09:00", "2026-01-19 09:00", "2026-01-26 09:00",
                  "2026-02-01 09:00", "2026-02-02 09:00"], id="dom-list-or-weekday"),
    # 31 April never exists, but OR with Monday still fires on April's Mondays.
    pytest.param("0 9 31 4 MON", "UTC", "2026-01-01 00:00",
                 ["2026-04-06 09:00", "2026-04-13 09:00", "2026-04-20 09:00",
                  "2026-04-27 09:00", "2027-04-05 09:00"], id="impossible-dom-or-weekday"),
    pytest.param("0 0 L * *", "UTC", "2026-01-15 00:00",
                 ["2026-01-31 00:00", "2026-02-28 00:00", "2026-03-31 00:00",
                  "2026-04-30 00:00"], id="last-day-of-month"),
    pytest.param("0 0 L 2 *", "UTC", "2027-03-01 00:00",
                 ["2028-02-29 00:00", "2029-02-28 00:00"], id="last-day-of-february"),
    pytest.param("0 0 LW * *", "UTC", "2026-01-01 00:00",
                 ["2026-01-30 00:00", "2026-02-27 00:00", "2026-03-31 00:00",
                  "2026-04-30 00:00", "2026-05-29 00:00"], id="last-weekday-of-month"),
    pytest.param("0 10 * * 5#2", "UTC", "2026-01-01 00:00",
                 ["2026-01-09 10:00", "2026-02-13 10:00", "2026-03-13 10:00"],
                 id="second-friday"),
    pytest.param("0 10 * * 5L", "UTC", "2026-01-01 00:00",
                 ["2026-01-30 10:00", "2026-02-27 10:00", "2026-03-27 10:00"],
                 id="last-friday"),
    pytest.param("@daily", HEL, "2026-01-01 00:00",
                 ["2026-01-01 22:00", "2026-01-02 22:00"], id="daily-helsinki"),
    pytest.param("@weekly", "UTC", "2026-01-01 00:00",
                 ["2026-01-04 00:00", "2026-01-11 00:00"], id="weekly-sunday-midnight"),
    # Autumn fold: 03:30 happens at 00:30 UTC (EEST) and 01:30 UTC (EET); only the first fires.
    pytest.param("30 3 * * *", HEL, "2026-10-24 00:00",
                 ["2026-10-24 00:30", "2026-10-25 00:30", "2026-10-26 01:30"], id="fold-daily"),
    pytest.param("30 3 * * *", HEL, "2026-10-25 01:00",  # 03:00 EET, the second pass
                 ["2026-10-26 01:30"], id="fold-daily-after-first-pass"),
    pytest.param("30 * * * *", HEL, "2026-10-24 23:00",  # 02:00 EEST
                 ["2026-10-24 23:30", "2026-10-25 00:30", "2026-10-25 02:30",
                  "2026-10-25 03:30"], id="fold-hourly-once-per-slot"),
    # Spring gap: 03:30 does not exist; shifted by the gap's hour to 04:30 EEST = 01:30 UTC.
    pytest.param("30 3 * * *", HEL, "2026-03-28 00:00",
                 ["2026-03-28 01:30", "2026-03-29 01:30", "2026-03-30 00:30"], id="gap-daily"),
    pytest.param("30 3 * * *", HEL, "2026-03-29 01:10",  # 04:10 EEST: the shifted slot is ahead
                 ["2026-03-29 01:30", "2026-03-30 00:30"], id="gap-daily-after-gap-end"),
    pytest.param("*/15 3 * * *", HEL, "2026-03-28 23:00",
                 ["2026-03-29 01:00", "2026-03-29 01:15", "2026-03-29 01:30",
                  "2026-03-29 01:45", "2026-03-30 00:00"], id="gap-each-slot-shifted"),
]


@pytest.mark.parametrize(("expr", "tz", "after", "expected"), RULES)
def test_next_fires(expr: str, tz: str, after: str, expected: list[str]) -> None:
    assert fires(expr, tz, after, len(expected)) == [u(e) for e in expected]


@pytest.mark.parametrize(
    ("after", "slot", "instant"),
    [
        ("2026-03-28 12:00", "2026-03-29 03:30", "2026-03-29 01:30"),  # gap: slot kept, shifted
        ("2026-10-24 12:00", "2026-10-25 03:30", "2026-10-25 00:30"),  # fold: first instant
    ],
)
def test_dst_slot_is_the_local_time_written(after: str, slot: str, instant: str) -> None:
    got_instant, got_slot = CronExpression.parse("30 3 * * *").next_slot(u(after), ZoneInfo(HEL))
    assert (got_instant, got_slot) == (u(instant), datetime.fromisoformat(slot))


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 9 15W * *", "day of month: '15W' is not valid"),  # cronsim has LW only
        ("0 9 * * 5#6", "day of week: '5#6' is not valid"),
        ("0 9 * * MON,", "day of week: empty list item"),
        ("0 25 * * *", "hour: '25' is not valid; expected 0-23"),
        ("0 0 9 * * *", "expected 5 fields"),  # no seconds field: slots are minutes
        ("@reboot", "expected 5 fields"),
    ],
)
def test_syntax_errors_name_field_and_item(expr: str, message: str) -> None:
    with pytest.raises(CronSyntaxError, match=message):
        CronExpression.parse(expr)


def test_config_error_is_readable() -> None:
    with pytest.raises(ValidationError, match=r"bad cron expression '0 9 15W \* \*': day of month"):
        ScheduleConfig(cron="0 9 15W * *")


@pytest.mark.parametrize("expr", ["0 9 31 4 *", "0 9 30 2 *", "0 9 30,31 2 */2"])
def test_impossible_days_parse_but_never_fire(expr: str) -> None:
    cron = CronExpression.parse(expr)  # a config loads; validation reports it
    with pytest.raises(CronSyntaxError, match="never fires"):
        cron.next_slot(u("2026-01-01 00:00"), ZoneInfo("UTC"))
