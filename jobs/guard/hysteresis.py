"""Pure verdict logic: down after N failures in a row (or N of the last M), up after K successes.

No I/O here, so every sequence can be table-tested (ARCHITECTURE.md, invariant 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from scheduler.config.checks import CheckConfig, CheckDefaults, WindowRule
from scheduler.store.checks import StateRow

Transition = Literal["down", "up"]
RECENT_KEEP = 50  # results remembered for the window rule; the column holds 200


@dataclass(frozen=True)
class Rules:
    failure_threshold: int = 3
    success_threshold: int = 2
    window: WindowRule | None = None
    interval: timedelta = timedelta(seconds=30)
    timeout: timedelta = timedelta(seconds=5)
    retry_interval: timedelta = timedelta(seconds=5)

    @classmethod
    def of(cls, check: CheckConfig, defaults: CheckDefaults) -> Rules:
        return cls(
            failure_threshold=check.failure_threshold or defaults.failure_threshold,
            success_threshold=check.success_threshold or defaults.success_threshold,
            window=check.window,
            interval=check.interval or defaults.interval,
            timeout=check.timeout or defaults.timeout,
            retry_interval=check.retry_interval or defaults.retry_interval,
        )

    def pause_bound(self) -> timedelta:
        """Worst case from the first failing check to the verdict, per the config."""
        return self.timeout + self.retry_interval * (self.failure_threshold - 1)


def initial(check_name: str, now: datetime) -> StateRow:
    return StateRow(check_name=check_name, verdict="pending", since=now)


def apply(state: StateRow, outcome: str, rules: Rules, at: datetime,
          detail: str | None = None) -> tuple[StateRow, Transition | None]:
    """Fold one result into the state; return the new state and the transition, if any.

    ``unknown`` (the guard could not see) changes no counter and never flips the verdict.
    """
    if outcome == "unknown":
        return state.with_(last_result_at=at, last_detail=detail), None
    failed = outcome != "ok"
    recent = (state.recent + ("x" if failed else "o"))[-RECENT_KEEP:]
    if failed:
        fails, oks = state.consecutive_failures + 1, 0
    else:
        fails, oks = 0, state.consecutive_successes + 1
    new = state.with_(consecutive_failures=fails, consecutive_successes=oks, recent=recent,
                      last_result_at=at, last_detail=detail)
    if failed and state.verdict != "down" and _trips(new, rules):
        return new.with_(verdict="down", since=at), "down"
    if not failed and state.verdict != "up" and oks >= rules.success_threshold:
        return new.with_(verdict="up", since=at), "up"
    return new, None


def _trips(state: StateRow, rules: Rules) -> bool:
    if state.consecutive_failures >= rules.failure_threshold:
        return True
    window = rules.window
    return window is not None and state.recent[-window.of:].count("x") >= window.failures


def next_delay(state: StateRow, rules: Rules) -> timedelta:
    """A check on its way to a new verdict is re-checked at ``retry_interval``."""
    settling = (
        (state.consecutive_failures > 0 and state.verdict != "down")
        or (state.consecutive_successes > 0 and state.verdict != "up")
    )
    return min(rules.retry_interval, rules.interval) if settling else rules.interval
