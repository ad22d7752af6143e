"""Pure schedule maths for the engine: which run rows a wake-up inserts, and next fire times.

Functions of an aware ``now`` and the schedule cursor kept in the database, so catch-up after a
restart never depends on APScheduler's memory (docs/ARCHITECTURE.md, invariant 2).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from scheduler.kinds import ScheduleSpec
from scheduler.schedules import Occurrence, Schedule
from scheduler.store.runs import Claim

ON_TIME_TOLERANCE = timedelta(seconds=60)

OccurrenceCache = dict[tuple[Schedule, datetime], list[Occurrence]]


def plan_claims(spec: ScheduleSpec, cursor: datetime | None, now: datetime,
                cache: OccurrenceCache | None = None) -> tuple[list[Claim], datetime | None]:
    """Which run rows a wake-up at ``now`` should insert for ``spec``, and the new cursor.

    A schedule with no cursor starts now (no backfill from the beginning of time). ``cache``
    shares the occurrence maths between specs with the same schedule and cursor (thousands of
    campaigns on "0 9 * * MON" move together). Missed occurrences within the grace run once
    (the latest; the others are ``coalesced``); older ones are recorded as ``missed``.
    """
    if cursor is None:
        # Count an occurrence that is due exactly now (first wake-up of a new schedule).
        cursor = now - timedelta(seconds=1)
    if cache is None:
        due: list[Occurrence] = list(spec.schedule.between(cursor, now))
    else:
        found = cache.get((spec.schedule, cursor))
        if found is None:
            found = cache[(spec.schedule, cursor)] = list(spec.schedule.between(cursor, now))
        due = found
    if not due:
        return [], None
    grace = effective_grace(spec)
    in_grace = [occ for occ in due if now - occ.at <= grace]
    runnable = in_grace[-1] if in_grace else None
    claims: list[Claim] = []
    for occ in due:
        if occ is runnable:
            status, detail = "pending", None
        elif now - occ.at > grace:
            status, detail = "missed", f"missed by {now - occ.at} (grace {grace})"
        else:
            status, detail = "coalesced", "coalesced into a later occurrence after downtime"
        claims.append(Claim(spec.key, spec.campaign, spec.kind, occ.at, occ.slot, status,
                            detail=detail))
    return claims, due[-1].at


def effective_grace(spec: ScheduleSpec) -> timedelta:
    """How late a run of ``spec`` may still start."""
    # Policy "skip" still runs an on-time wake-up; only "run_once" reaches back to the grace.
    if spec.missed == "run_once":
        return spec.misfire_grace
    return min(spec.misfire_grace, ON_TIME_TOLERANCE)


def next_fire_times(specs: dict[str, ScheduleSpec], now: datetime
                    ) -> dict[str, datetime | None]:
    """Each spec's next fire after ``now`` (None when over); shared schedules once."""
    out: dict[str, datetime | None] = {}
    by_schedule: dict[Schedule, datetime | None] = {}
    for key, spec in specs.items():
        if spec.schedule not in by_schedule:
            try:
                occ = spec.schedule.next_after(now)
            except Exception:  # logged when the schedule is woken; status just shows none
                occ = None
            by_schedule[spec.schedule] = occ.at if occ else None
        out[key] = by_schedule[spec.schedule]
    return out
