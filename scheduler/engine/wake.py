"""APScheduler only wakes the process: one job per distinct schedule, waking every key on it.

The database decides what runs (claims.py); this module never inserts anything. Thousands of
campaigns share a handful of schedules ("0 9 * * MON"): one wake-up job each keeps start-up
fast, since APScheduler inspects every callable it is given.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from scheduler.clock import Clock
from scheduler.kinds import ScheduleSpec
from scheduler.schedules import Schedule
from scheduler.triggers import ScheduleTrigger

log = logging.getLogger("martech.engine")

OnWake = Callable[[list[str]], Awaitable[None]]


class Waker:
    def __init__(self, clock: Clock, on_wake: OnWake) -> None:
        self.clock = clock
        self.on_wake = on_wake
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.jobs: dict[str, list[str]] = {}  # APScheduler job id -> schedule keys it wakes

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def sync(self, specs: dict[str, ScheduleSpec]) -> None:
        """Make the wake-up jobs match ``specs``; unchanged groups are left alone.

        Re-adding with ``replace_existing`` recomputes the next time from now (APScheduler
        #696): harmless here, since catch-up is computed from the cursor in the database.
        """
        groups: dict[Schedule, list[str]] = {}
        for key in sorted(specs):
            groups.setdefault(specs[key].schedule, []).append(key)
        wanted = {f"wake:{schedule!r}": (schedule, keys) for schedule, keys in groups.items()}
        for job_id in set(self.jobs) - set(wanted):
            self.remove(job_id)
        synced: dict[str, list[str]] = {}
        for job_id, (schedule, keys) in wanted.items():
            if self.jobs.get(job_id) == keys or self._add(job_id, schedule, keys, specs):
                synced[job_id] = keys
        self.jobs = synced

    def _add(self, job_id: str, schedule: Schedule, keys: list[str],
             specs: dict[str, ScheduleSpec]) -> bool:
        try:
            trigger = ScheduleTrigger(schedule)
            # APScheduler evaluates a trigger only later (at start, outside our control):
            # evaluate it once here, where an error can be contained.
            trigger.get_next_fire_time(None, self.clock.now())
            self.scheduler.add_job(
                self.on_wake, trigger, args=[keys], id=job_id, name=job_id,
                misfire_grace_time=None, coalesce=True, max_instances=1000,
                replace_existing=True)
            return True
        except Exception:
            # One bad schedule (a cron that never fires slipped past validation) must not
            # keep the others from waking: log it, leave it out.
            self.remove(job_id)
            for key in keys:
                log.exception("schedule cannot be woken; skipped", extra={
                    "action": "schedule_error", "job": specs[key].campaign})
            return False

    def remove(self, job_id: str) -> None:
        # APScheduler drops a job by itself once its trigger is exhausted (one-offs).
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(job_id)
