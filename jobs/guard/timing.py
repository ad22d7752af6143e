"""When each check runs: its own fixed phase of the interval, so a thousand checks do not all
start in the same instant and stay in lock-step (bench/guard.py: lateness and CPU bursts).

- The phase is a hash of the check's name: the same on every restart and every node.
- The first run comes soon after start-up (within ``min(interval, FIRST_SPREAD_S)``, spread by
  the same hash), so a guard that starts while a site is down says so within seconds.
- Regular runs then land on the check's phase slots: the next run is the latest slot no later
  than one interval after the previous one, so a check never waits longer than its interval
  (once, right after start-up or a retry, it may come early to move into its slot).
- Retries (a check on its way to a new verdict) keep ``retry_interval`` exactly, counted from
  the start of the run that needs the retry: the pause bound is unchanged.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from jobs.guard.hysteresis import Rules, next_delay
from scheduler.store.checks import StateRow

FIRST_SPREAD_S = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def phase(name: str) -> float:
    """A fraction in [0, 1) fixed for ``name`` (not ``hash()``: that is salted per process)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def first_due(name: str, interval: timedelta, now: datetime) -> datetime:
    spread_s = min(interval.total_seconds(), FIRST_SPREAD_S)
    return now + timedelta(seconds=round(phase(name) * spread_s, 6))


def slot_at_or_before(name: str, interval: timedelta, at: datetime) -> datetime:
    """The latest start in ``name``'s phase of ``interval`` that is not after ``at``."""
    interval_us = max(interval // _US, 1)
    offset_us = int(phase(name) * interval_us)
    k = ((at - _EPOCH) // _US - offset_us) // interval_us
    return _EPOCH + (k * interval_us + offset_us) * _US


def next_due(name: str, state: StateRow, rules: Rules, due: datetime, begun: datetime
             ) -> datetime:
    """The next start of a check whose run due at ``due`` began at ``begun``."""
    base = max(due, begun)
    delay = next_delay(state, rules)
    if delay < rules.interval:
        return base + delay  # a retry: exactly retry_interval after this run
    return slot_at_or_before(name, rules.interval, base + delay)
