"""Which campaigns a check guards, and which a maintenance window covers — from config alone.

Shared by the guard (what to pause) and reports (whose uptime a window excuses).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from scheduler.config.checks import MaintenanceWindow, Selector
from scheduler.config.loader import LoadedConfig
from scheduler.schedules import Schedule, local_datetime

CONNECTIVITY = "_connectivity"  # leading "_" cannot clash with a configured check name


def _selected(selector: Selector, campaign: Any) -> bool:
    return selector.matches(campaign.name, campaign.kind, list(campaign.tags))


def guarded_by(config: LoadedConfig, check: str) -> list[str]:
    """Campaigns ``check`` protects: guards in checks.yaml plus campaign-side ``requires``."""
    out: set[str] = set()
    for guard in config.checks.guards:
        if guard.check != check:
            continue
        selector = guard.selector()
        out.update(c.name for c in config.campaigns.values() if _selected(selector, c))
    out.update(c.name for c in config.campaigns.values() if check in c.requires)
    return sorted(out)


def guard_map(config: LoadedConfig) -> dict[str, list[str]]:
    return {name: guarded_by(config, name) for name in config.checks.checks}


@dataclass(frozen=True)
class Span:
    start: datetime  # aware UTC
    end: datetime

    def key(self) -> str:
        return self.start.strftime("%Y%m%dT%H%M%SZ")


def one_off_span(window: MaintenanceWindow) -> Span | None:
    if window.start is None or window.cron is not None:
        return None
    start = local_datetime(window.start, window.timezone)
    if window.end is not None:
        end = local_datetime(window.end, window.timezone)
    else:
        assert window.duration is not None
        end = start + window.duration
    return Span(start, end)


def active_span(window: MaintenanceWindow, now: datetime) -> Span | None:
    """The occurrence of ``window`` covering ``now`` (start inclusive, end exclusive).

    Recurring windows start at each cron slot in the window's timezone (DST-safe: the cron
    engine maps every local slot to one instant) and last ``duration`` of elapsed time.
    """
    span = one_off_span(window)
    if span is not None:
        return span if span.start <= now < span.end else None
    if window.cron is None or window.duration is None:
        return None
    schedule = Schedule(timezone=window.timezone, cron=window.cron)
    occ = schedule.next_after(now - window.duration)
    if occ is not None and occ.at <= now:
        return Span(occ.at, occ.at + window.duration)
    return None


def last_span_before(window: MaintenanceWindow, now: datetime) -> Span | None:
    """The most recent occurrence that has already ended (for the end-of-window alert)."""
    span = one_off_span(window)
    if span is not None:
        return span if span.end <= now else None
    if window.cron is None or window.duration is None:
        return None
    schedule = Schedule(timezone=window.timezone, cron=window.cron)
    # Look back a little over one duration: an end alert older than that was already sent.
    found: Span | None = None
    for occ in schedule.between(now - window.duration * 2 - timedelta(hours=1), now):
        if occ.at + window.duration <= now:
            found = Span(occ.at, occ.at + window.duration)
    return found


def spans_between(window: MaintenanceWindow, start: datetime, end: datetime) -> list[Span]:
    """Every occurrence of ``window`` overlapping ``[start, end)``, oldest first."""
    span = one_off_span(window)
    if span is not None:
        return [span] if span.start < end and span.end > start else []
    if window.cron is None or window.duration is None:
        return []
    schedule = Schedule(timezone=window.timezone, cron=window.cron)
    return [Span(occ.at, occ.at + window.duration)
            for occ in schedule.between(start - window.duration, end)
            if occ.at + window.duration > start and occ.at < end]


def covered_by(config: LoadedConfig, window: MaintenanceWindow) -> list[str]:
    selector = window.selector()
    return sorted(c.name for c in config.campaigns.values() if _selected(selector, c))
