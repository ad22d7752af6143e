"""A small, pure cron-expression engine: five fields, evaluated in local wall-clock time.

APScheduler 3.11's ``CronTrigger`` fires twice for a local time inside the autumn DST fold and
at a shifted time inside the spring gap. Here every match is a *local slot* (a naive local time)
turned into one UTC instant: inside the fold the first (summer-time) instant is taken, inside the
gap the time is shifted forward by the gap's length — so each local slot fires exactly once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MAX_SEARCH_DAYS = 366 * 8


class CronSyntaxError(ValueError):
    pass


def _parse_value(text: str, names: dict[str, int] | None, field: str) -> int:
    upper = text.upper()
    if names and upper in names:
        return names[upper]
    if not text.isdigit():
        raise CronSyntaxError(f"{field}: {text!r} is not a number" + (
            f" or one of {', '.join(names)}" if names else ""))
    return int(text)


def _parse_field(text: str, low: int, high: int, field: str,
                 names: dict[str, int] | None = None) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronSyntaxError(f"{field}: empty list item")
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronSyntaxError(f"{field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if part == "*":
            start, end = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = _parse_value(a, names, field), _parse_value(b, names, field)
        else:
            start = _parse_value(part, names, field)
            end = high if step != 1 else start
        if field == "day of week" and end == 7:
            end = 7  # 7 is Sunday too; folded below
        top = 7 if field == "day of week" else high
        if not (low <= start <= top and low <= end <= top) or start > end:
            raise CronSyntaxError(f"{field}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    if field == "day of week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class CronExpression:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    dom_restricted: bool
    dow_restricted: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Parse ``"0 9 * * MON"`` (cached: configs repeat the same few expressions).

        :raises CronSyntaxError: naming the field that is wrong.
        """
        return _parse_cached(text)

    @classmethod
    def _parse(cls, text: str) -> CronExpression:
        expanded = _ALIASES.get(text.strip().lower(), text)
        fields = expanded.split()
        if len(fields) != 5:
            raise CronSyntaxError(
                f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
        minute, hour, day, month, weekday = fields
        return cls(
            minutes=_parse_field(minute, 0, 59, "minute"),
            hours=_parse_field(hour, 0, 23, "hour"),
            days=_parse_field(day, 1, 31, "day of month"),
            months=_parse_field(month, 1, 12, "month", _MONTHS),
            weekdays=_parse_field(weekday, 0, 6, "day of week", _DAYS),
            dom_restricted=day != "*",
            dow_restricted=weekday != "*",
            text=text,
        )

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom_ok = day.day in self.days
        dow_ok = (day.isoweekday() % 7) in self.weekdays
        if self.dom_restricted and self.dow_restricted:
            return dom_ok or dow_ok  # Vixie cron: either restriction matches
        return dom_ok and dow_ok

    def next_slot(self, after: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The first fire strictly after ``after`` (aware) as ``(utc_instant, local_slot)``.

        ``local_slot`` is the naive local wall-clock time the expression matched.
        """
        after_utc = after.astimezone(UTC)
        local_after = after_utc.astimezone(tz).replace(tzinfo=None)
        # Start one day early: a gap shift can move a slot of the previous day past `after`.
        day = local_after.date() - timedelta(days=1)
        hours = sorted(self.hours)
        minutes = sorted(self.minutes)
        for _ in range(_MAX_SEARCH_DAYS):
            if self._day_matches(day):
                for hour in hours:
                    for minute in minutes:
                        slot = datetime.combine(day, time(hour, minute))
                        instant = to_utc(slot, tz)
                        if instant > after_utc:
                            return instant, slot
            day += timedelta(days=1)
        raise CronSyntaxError(f"{self.text!r} never fires")


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> CronExpression:
    return CronExpression._parse(text)  # frozen result: safe to share


def to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """A naive local time as one UTC instant: first instant in a fold, shifted past a gap."""
    # fold=0 gives the earlier instant in a fold and, for a time inside a gap, the pre-gap
    # offset — which lands the same distance past the gap's end (03:30 → 04:30 when 03→04).
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)
