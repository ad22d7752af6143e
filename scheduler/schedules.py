"""Schedules as pure functions of an aware datetime: next fire time and local slot.

A *local slot* is the naive wall-clock time an occurrence stands for; runs are unique on it,
so an occurrence fires once even across DST folds (ARCHITECTURE.md, invariant 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from scheduler.cron import CronExpression, to_utc
from scheduler.durations import format_duration


@dataclass(frozen=True)
class Occurrence:
    at: datetime  # aware UTC
    slot: str  # local wall-clock time, ISO minute precision, e.g. "2026-10-25T03:30"


def slot_text(local: datetime) -> str:
    return local.strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class Schedule:
    """When a job fires: a cron expression, a fixed interval, or one date."""

    timezone: str = "UTC"
    cron: str | None = None
    interval: timedelta | None = None
    at: datetime | None = None  # aware
    start: datetime | None = None  # aware; interval anchor and earliest fire
    end: datetime | None = None  # aware; no fire after
    lead: timedelta = timedelta(0)  # fire this long before each occurrence (reminders)
    label: str | None = None  # the zone as `status` names it, when not `timezone` (per recipient)
    _cron: CronExpression | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        kinds = (self.cron is not None) + (self.interval is not None) + (self.at is not None)
        if kinds != 1:
            raise ValueError("a schedule needs exactly one of cron, interval, at")
        if self.cron is not None and self._cron is None:
            object.__setattr__(self, "_cron", CronExpression.parse(self.cron))

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        if self.cron:
            return f"cron {self.cron} ({self.label or self.timezone})"
        if self.interval is not None:
            return f"every {format_duration(self.interval)}"
        assert self.at is not None
        return f"once at {self.at.astimezone(self.tz):%Y-%m-%d %H:%M %Z}"

    def next_after(self, after: datetime) -> Occurrence | None:
        """The first occurrence strictly after ``after``; None when the schedule is over."""
        # With a lead, the fire time is the occurrence minus the lead; the slot stays the
        # occurrence's own, so each (occurrence, lead) pair is unique under its schedule key.
        after = after.astimezone(UTC) + self.lead
        if self.start is not None and after < self.start:
            after = self.start - timedelta(microseconds=1)
        occ = self._next(after)
        if occ is None or (self.end is not None and occ.at > self.end):
            return None
        if self.lead:
            return Occurrence(occ.at - self.lead, occ.slot)
        return occ

    def _next(self, after: datetime) -> Occurrence | None:
        tz = self.tz
        if self._cron is not None:
            instant, local = self._cron.next_slot(after, tz)
            return Occurrence(instant, slot_text(local))
        if self.interval is not None:
            step = self.interval.total_seconds()
            anchor = self.start or datetime(2000, 1, 1, tzinfo=UTC)
            k = int((after - anchor).total_seconds() // step) + 1
            instant = anchor + timedelta(seconds=k * step)
            while instant <= after:  # guard float rounding
                instant += self.interval
            # Intervals are absolute, so their slot is the UTC instant itself.
            return Occurrence(instant, slot_text(instant.replace(tzinfo=None)) + "Z")
        assert self.at is not None
        if self.at > after:
            return Occurrence(self.at.astimezone(UTC),
                              slot_text(self.at.astimezone(tz).replace(tzinfo=None)))
        return None

    def between(self, after: datetime, until: datetime, limit: int = 100_000
                ) -> Iterator[Occurrence]:
        """Occurrences in ``(after, until]``, oldest first."""
        cursor = after
        for _ in range(limit):
            occ = self.next_after(cursor)
            if occ is None or occ.at > until:
                return
            yield occ
            cursor = occ.at


def local_datetime(text: str | datetime, timezone: str) -> datetime:
    """``"2026-11-27 10:00"`` in ``timezone`` as aware UTC (gap-shifted, first in a fold)."""
    naive = text if isinstance(text, datetime) else datetime.fromisoformat(str(text).strip())
    if naive.tzinfo is not None:
        return naive.astimezone(UTC)
    return to_utc(naive, ZoneInfo(timezone))
