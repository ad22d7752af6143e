"""The one place that reads the wall clock, so tests move time with freezegun or a fake."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...

    async def sleep_until(self, when: datetime, stop: asyncio.Event | None = None) -> None:
        """Return once ``now() >= when`` (or ``stop`` is set): a wait of hours costs nothing."""
        ...


async def _wait_or_stop(waiter: asyncio.Future[None] | None, stop: asyncio.Event | None,
                        timeout_s: float | None) -> None:
    waits: list[asyncio.Future[object]] = []
    if waiter is not None:
        waits.append(waiter)  # type: ignore[arg-type]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    try:
        if waits:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        elif timeout_s is not None:
            await asyncio.sleep(timeout_s)
    finally:
        for item in waits:
            if item is not waiter and not item.done():
                item.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await item


class SystemClock:
    """Reads the real clock. ``datetime.now`` is used (not ``time.time``) so freezegun applies."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: datetime, stop: asyncio.Event | None = None) -> None:
        delay_s = (when - self.now()).total_seconds()
        if delay_s > 0:
            await _wait_or_stop(None, stop, delay_s)


class FakeClock:
    """A clock tests move by hand; ``sleep_until`` sleepers wake when it is moved past them."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._mono = 0.0
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, delta: timedelta | float) -> None:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        for when, future in self._sleepers:
            if when <= self._now and not future.done():
                # advance() may be called from any thread (a test's worker): hand the wake-up
                # to the sleeper's own loop.
                future.get_loop().call_soon_threadsafe(_wake, future)

    @property
    def sleepers(self) -> int:
        """How many tasks sleep until a time still ahead (tests wait for a sender to settle)."""
        return sum(1 for w, f in self._sleepers if w > self._now and not f.done())

    async def sleep_until(self, when: datetime, stop: asyncio.Event | None = None) -> None:
        if when <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = (when, future)
        self._sleepers.append(item)
        try:
            await _wait_or_stop(future, stop, None)
        finally:
            self._sleepers.remove(item)

    def set(self, when: datetime) -> None:
        self.advance(when.astimezone(UTC) - self._now)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def utc(dt: datetime) -> datetime:
    """Return ``dt`` as aware UTC; naive datetimes from the database are UTC by convention."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)
