"""Each reader's own 9 a.m.: ``schedule: {cron: "0 9 * * MON", timezone: recipient}``.

One run per occurrence, as for any schedule; what differs is when each of its deliveries is
due. The occurrence is a wall-clock slot ("Monday 09:00"); each recipient's row is due at that
wall-clock time in the recipient's own zone (the audience column ``timezone_column``, else
``default_timezone``), converted with the same DST rules as the engine (a time in the spring
gap moves forward, one in the autumn fold is the first): one row per recipient, so once, DST
or not. The run fires at the earliest 09:00 on Earth (UTC+14) and stays running until the
last zone is done, sleeping until the next due row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jobs.newsletter.config import RECIPIENT
from scheduler.cron import to_utc
from scheduler.engine import RELEASED
from scheduler.store.runs import RunRow

# The run fires in UTC+14 (Kiritimati), where any day's 09:00 comes first.
# From the first 09:00 (UTC+14) to the last (UTC-12): how long one run's slot lasts.
ZONE_SPREAD = timedelta(hours=26)
EXAMPLES = 5


@dataclass
class ZonePlan:
    """Due time per recipient; counts per zone for ``status`` and the report."""

    slot: datetime  # naive wall-clock time of the occurrence
    default_zone: str
    column: str
    zones: dict[str, dict[str, Any]] = field(default_factory=dict)
    defaulted: int = 0
    invalid: list[str] = field(default_factory=list)
    _cache: dict[str, tuple[str, datetime]] = field(default_factory=dict, repr=False)

    def due_at(self, variables: dict[str, Any] | None) -> datetime:
        raw = str((variables or {}).get(self.column) or "").strip()
        zone, due = self._resolve(raw)
        entry = self.zones.setdefault(zone, {"due_at": due.isoformat(), "recipients": 0})
        entry["recipients"] += 1
        return due

    def _resolve(self, raw: str) -> tuple[str, datetime]:
        cached = self._cache.get(raw)
        if cached is None:
            zone = raw or self.default_zone
            try:
                tz = ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                if len(self.invalid) < EXAMPLES:
                    self.invalid.append(raw)
                zone, tz = self.default_zone, ZoneInfo(self.default_zone)
            cached = self._cache[raw] = (zone, to_utc(self.slot, tz))
        if cached[0] != raw:
            self.defaulted += 1
        return cached

    def stats(self) -> dict[str, Any]:
        return {"zones": dict(sorted(self.zones.items(), key=lambda z: z[1]["due_at"])),
                "zone_defaulted": self.defaulted, "zone_invalid_examples": self.invalid}


def plan_for(campaign: Any, run: RunRow) -> ZonePlan | None:
    """The run's zone plan, or None: a fixed-zone schedule, or a manual run (sent now)."""
    schedule = campaign.schedule
    if schedule.timezone != RECIPIENT or run.trigger != "schedule":
        return None
    return ZonePlan(datetime.fromisoformat(run.local_slot), schedule.default_timezone,
                    schedule.timezone_column)


def held_before(run: RunRow) -> bool:
    """The engine held this run and released it later (its detail says so)."""
    return (run.detail or "").startswith(RELEASED)


def overdue_before(campaign: Any, run: RunRow, now: datetime, *, first: bool) -> datetime:
    """Rows due before this are too late to send. When the run starts late after downtime,
    a row past ``misfire_grace`` is missed, as a run would be; once started (or after a hold)
    ``max_delay`` applies to each row, as it does to a held run."""
    first_start_after_downtime = first and not held_before(run)
    limit: timedelta = (campaign.schedule.misfire_grace if first_start_after_downtime
                        else campaign.send.max_delay)
    return now - limit
