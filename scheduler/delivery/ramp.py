"""A gentle resume: after a long pause, the rate climbs from a fraction to full over a while.

Mailbox providers read a sudden burst from a sender that was quiet as a spam signal; a held
backlog released at full rate is exactly that burst. :class:`Ramp` is a pure function of the
(injected) clock's time: the share of the configured rate allowed at ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Ramp:
    since: datetime  # when sending resumed
    duration: timedelta
    start_fraction: float  # 0 < f ≤ 1

    @property
    def until(self) -> datetime:
        return self.since + self.duration

    def factor(self, now: datetime) -> float:
        """``start_fraction`` at ``since``, rising linearly to 1.0 at ``until``."""
        if now >= self.until or self.duration <= timedelta(0):
            return 1.0
        elapsed = max(0.0, (now - self.since) / self.duration)
        return self.start_fraction + (1.0 - self.start_fraction) * elapsed

    def describe(self) -> str:
        return (f"from {self.start_fraction:.0%} of the rate at {self.since:%Y-%m-%d %H:%M} UTC "
                f"to full at {self.until:%Y-%m-%d %H:%M} UTC")
