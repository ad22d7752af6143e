"""Cron expressions by ``cronsim`` (Debian cron's rules), evaluated as local wall-clock slots.

cronsim decides which naive local times match: day-of-month and day-of-week are ANDed when
either field starts with ``*`` (``*/2`` is no restriction to cron) and ORed otherwise; ``L``,
``LW``, ``5L`` and ``5#2`` are supported. We iterate it in *naive* local time and turn each
match (a *local slot*) into one UTC instant ourselves, because cronsim's own DST handling is
Debian's, not ours: with an aware start it fires a gap slot at the gap's end (03:30 → 04:00)
and an hourly job twice in the fold. Our policy: inside the fold the first (summer-time)
instant, inside the gap the time shifted forward by the gap's length — each slot fires once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

_ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SHAPE = "minute hour day-of-month month day-of-week"
_RANGES = "; also lists a,b, ranges a-b and steps */n or a-b/n"
_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31, L (last day) or LW (last weekday)"),
    ("month", "1-12 or JAN-DEC"),
    ("day of week", "0-7 (0 and 7 are Sunday), SUN-SAT, 5L (last Friday) or 5#2 (2nd Friday)"),
)
_PROBE_START = datetime(2000, 1, 1)


class CronSyntaxError(ValueError):
    pass


def _check_fields(fields: list[str]) -> None:
    """Raise for the first item cronsim rejects, naming it (cronsim just says "Bad minute")."""
    for index, ((name, allowed), text) in enumerate(zip(_FIELDS, fields, strict=True)):
        for item in text.split(","):
            if not item:
                raise CronSyntaxError(f"{name}: empty list item in {text!r}")
            # Alone among wildcards, so only this item can be what cronsim refuses.
            probe = ["*"] * 5
            probe[index] = item
            try:
                CronSim(" ".join(probe), _PROBE_START)
            except CronSimError:
                raise CronSyntaxError(
                    f"{name}: {item!r} is not valid; expected {allowed}{_RANGES}") from None


@dataclass(frozen=True)
class CronExpression:
    text: str  # as written
    fields: str  # the five fields handed to cronsim, aliases expanded
    matches: bool  # False for well-formed fields that no date satisfies ("0 9 30 2 *")

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
        if len(fields) != 5:  # cronsim would take a 6th (seconds) field: slots are minutes
            known = ", ".join(_ALIASES)
            raise CronSyntaxError(
                f"expected 5 fields ({_SHAPE}) or one of {known}; got {len(fields)} in {text!r}")
        joined = " ".join(fields)
        try:
            CronSim(joined, _PROBE_START)
        except CronSimError:
            _check_fields(fields)
            # Each field is fine alone; cronsim refuses days no month has (30 February).
            # Not a parse error: the schedule loads and says "never fires" when asked.
            return cls(text=text, fields=joined, matches=False)
        return cls(text=text, fields=joined, matches=True)

    def next_slot(self, after: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The first fire strictly after ``after`` (aware) as ``(utc_instant, local_slot)``.

        ``local_slot`` is the naive local wall-clock time the expression matched.

        :raises CronSyntaxError: when the expression never fires.
        """
        after_utc = after.astimezone(UTC)
        local_after = after_utc.astimezone(tz).replace(tzinfo=None, fold=0)
        start = local_after
        if _offset_changed_within_a_day(after_utc, tz):
            # A slot in a spring gap is shifted forward by the gap, so one before `after`'s
            # wall time can land after `after`: scan from the previous local midnight.
            start = datetime.combine(local_after.date() - timedelta(days=1), time())
            start -= timedelta(seconds=1)  # cronsim yields matches strictly after its start
        if self.matches:
            # cronsim gives up (StopIteration) after 50 years without a match.
            for slot in CronSim(self.fields, start):
                instant = to_utc(slot, tz)
                if instant > after_utc:
                    return instant, slot
        raise CronSyntaxError(f"{self.text!r} never fires")


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str) -> CronExpression:
    return CronExpression._parse(text)  # frozen result: safe to share


def _offset_changed_within_a_day(after_utc: datetime, tz: ZoneInfo) -> bool:
    """Whether ``tz`` changed its offset in the day before ``after`` (or a little earlier)."""
    day = after_utc.date()
    return _day_has_transition(tz, day) or _day_has_transition(tz, day - timedelta(days=1))


@functools.lru_cache(maxsize=8192)
def _day_has_transition(tz: ZoneInfo, day: date) -> bool:
    """Whether the offset changes within this UTC day (hourly samples; cached per zone and day).

    Cheaper than scanning a day of slots, which only a recent spring gap makes necessary; gaps
    last at most a day (Samoa, 2011). Missed only by two opposite transitions within an hour.
    """
    midnight = datetime.combine(day, time(), tzinfo=UTC)
    offsets = {(midnight + timedelta(hours=h)).astimezone(tz).utcoffset() for h in range(25)}
    return len(offsets) > 1


def to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """A naive local time as one UTC instant: first instant in a fold, shifted past a gap."""
    # fold=0 gives the earlier instant in a fold and, for a time inside a gap, the pre-gap
    # offset — which lands the same distance past the gap's end (03:30 → 04:30 when 03→04).
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)
