"""Verdicts with hysteresis, table-driven: sequences of results and the verdict they give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs.guard.hysteresis import Rules, apply, initial, next_delay
from scheduler.config.checks import WindowRule

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def run(seq: str, rules: Rules, start: str = "pending") -> tuple[str, list[str]]:
    """Fold 'o' (ok), 'x' (fail), '?' (unknown); return the final verdict and transitions."""
    outcome = {"o": "ok", "x": "fail", "?": "unknown"}
    state = initial("web", T0).with_(verdict=start)
    transitions = []
    for i, ch in enumerate(seq):
        state, change = apply(state, outcome[ch], rules, T0 + timedelta(seconds=i))
        if change:
            transitions.append(f"{i}:{change}")
    return state.verdict, transitions


CASES = [
    # seq, failure_threshold, success_threshold, window, start, verdict, transitions
    ("xxoxx", 3, 2, None, "up", "up", []),  # the example: never 3 in a row
    ("xxx", 3, 2, None, "up", "down", ["2:down"]),
    ("xxxx", 3, 2, None, "up", "down", ["2:down"]),  # no second transition
    ("xxxo", 3, 2, None, "up", "down", ["2:down"]),  # one success is not enough
    ("xxxoo", 3, 2, None, "up", "up", ["2:down", "4:up"]),
    ("xxxoxoo", 3, 2, None, "up", "up", ["2:down", "6:up"]),  # a failure resets the streak
    ("x", 1, 1, None, "up", "down", ["0:down"]),
    ("xx?x", 3, 2, None, "up", "down", ["3:down"]),  # unknown neither counts nor resets
    ("???", 1, 1, None, "up", "up", []),  # cannot see is not down
    ("oo", 3, 2, None, "pending", "up", ["1:up"]),
    ("o", 3, 2, None, "pending", "pending", []),
    ("xxx", 3, 2, None, "pending", "down", ["2:down"]),
    ("xoxox", 3, 2, WindowRule(failures=3, of=5), "up", "down", ["4:down"]),  # flapping
    ("xoxoo", 3, 2, WindowRule(failures=3, of=5), "up", "up", []),
    ("xooxoox", 3, 2, WindowRule(failures=3, of=5), "up", "up", []),  # 2 of the last 5
    ("xoxoxoo", 3, 2, WindowRule(failures=3, of=5), "up", "up", ["4:down", "6:up"]),
]


@pytest.mark.parametrize(("seq", "ft", "st", "window", "start", "verdict", "transitions"),
                         CASES)
def test_sequences(seq: str, ft: int, st: int, window: WindowRule | None, start: str,
                   verdict: str, transitions: list[str]) -> None:
    rules = Rules(failure_threshold=ft, success_threshold=st, window=window)
    assert run(seq, rules, start) == (verdict, transitions)


def test_retry_interval_while_settling() -> None:
    rules = Rules(interval=timedelta(seconds=30), retry_interval=timedelta(seconds=5))
    state = initial("web", T0).with_(verdict="up")
    assert next_delay(state, rules) == timedelta(seconds=30)
    state, _ = apply(state, "fail", rules, T0)
    assert next_delay(state, rules) == timedelta(seconds=5)  # first failure: re-check sooner
    state, _ = apply(state, "fail", rules, T0)
    state, change = apply(state, "fail", rules, T0)
    assert change == "down"
    assert next_delay(state, rules) == timedelta(seconds=30)  # decided: back to the interval
    state, _ = apply(state, "ok", rules, T0)
    assert next_delay(state, rules) == timedelta(seconds=5)  # recovering: confirm sooner


def test_pause_bound() -> None:
    rules = Rules(failure_threshold=3, timeout=timedelta(seconds=5),
                  retry_interval=timedelta(seconds=10))
    assert rules.pause_bound() == timedelta(seconds=25)
