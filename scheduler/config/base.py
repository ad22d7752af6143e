"""Shared pieces of the config models: strict base, timezones, names, schedules."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from scheduler.cron import CronExpression, CronSyntaxError
from scheduler.durations import Duration
from scheduler.schedules import Schedule, local_datetime


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must not silently become a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown timezone {value!r}; expected an IANA name like Europe/Berlin or UTC"
        ) from exc
    return value


# Any reference will do: a cron that fires at all fires within the bounded search of
# `next_slot` (cronsim's 50 years; 30 February is refused at once).
_CRON_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=1024)
def _cron_problem(value: str) -> str | None:
    """Why ``value`` is not a usable cron, or None (cached: configs repeat expressions)."""
    try:
        CronExpression.parse(value).next_slot(_CRON_REFERENCE, ZoneInfo("UTC"))
    except CronSyntaxError as exc:
        # "0 9 30 2 *" parses but never fires: caught here, not when the engine starts.
        return f"bad cron expression {value!r}: {exc}"
    return None


def _check_cron(value: str) -> str:
    problem = _cron_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name; use lowercase letters, digits, '-', '_' or '.'"
        )
    return value


def _check_local_datetime(value: str) -> str:
    try:
        datetime.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a date-time; expected e.g. 2026-11-27 10:00") from exc
    return str(value)


check_timezone = _check_timezone  # public: kinds build zone-like fields of their own on it
TimezoneName = Annotated[str, AfterValidator(_check_timezone)]
CronText = Annotated[str, AfterValidator(_check_cron)]
Name = Annotated[str, AfterValidator(_check_name)]
LocalDateTimeText = Annotated[str, AfterValidator(_check_local_datetime)]
MissedPolicy = Literal["run_once", "skip"]


class ScheduleConfig(StrictModel):
    """When a campaign fires: exactly one of ``cron``, ``every`` or ``at``."""

    cron: CronText | None = Field(default=None, description='e.g. "0 9 * * MON"')
    every: Duration | None = Field(default=None, description="fixed interval, e.g. 1h")
    at: LocalDateTimeText | None = Field(default=None, description='once, e.g. "2026-12-01 09:00"')
    timezone: TimezoneName = "UTC"
    start: LocalDateTimeText | None = None
    end: LocalDateTimeText | None = None
    misfire_grace: Duration = Field(
        default=timedelta(hours=1), description="how late a missed run may still go out"
    )
    missed: MissedPolicy = Field(
        default="run_once", description="after downtime: run_once (coalesced) or skip"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleConfig:
        given = [k for k in ("cron", "every", "at") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of cron, every, at")
        if self.every is not None and self.every < timedelta(seconds=1):
            raise ValueError("every must be at least 1s")
        return self

    def to_schedule(self) -> Schedule:
        return Schedule(
            timezone=self.timezone,
            cron=self.cron,
            interval=self.every,
            at=local_datetime(self.at, self.timezone) if self.at else None,
            start=local_datetime(self.start, self.timezone) if self.start else None,
            end=local_datetime(self.end, self.timezone) if self.end else None,
        )
