"""An APScheduler 3 trigger backed by our pure schedule maths.

APScheduler only wakes the process (ARCHITECTURE.md, invariant 2); using our own trigger sidesteps
``CronTrigger``'s double fire in the DST fold and its shifted fire in the gap.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger

from scheduler.schedules import Schedule


class ScheduleTrigger(BaseTrigger):  # type: ignore[misc]
    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime
                           ) -> datetime | None:
        after = previous_fire_time if previous_fire_time is not None else now
        if previous_fire_time is None:
            after = now - timedelta(microseconds=1)  # a fire exactly at `now` still counts
        occ = self.schedule.next_after(after)
        return occ.at if occ else None

    def __str__(self) -> str:
        return self.schedule.describe()

    def __getstate__(self) -> dict[str, Any]:  # memory store only; never pickled to disk
        return {"schedule": self.schedule}
