"""Durations as people write them: 30s, 5m, 1h30m."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel, ValidationError

from scheduler.durations import Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(minutes=90)),
        ("1h 30m", timedelta(minutes=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
        ("0", timedelta(0)),
        (45, timedelta(seconds=45)),
        (timedelta(hours=3), timedelta(hours=3)),
    ],
)
def test_parse(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "5", "5x", "m5", "1h30", "h", "-5m", True, None, [1]])
def test_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_round_trips() -> None:
    for text in ("30s", "5m", "1d", "1d2h3m4s"):
        assert format_duration(parse_duration(text)) == text
    assert format_duration(timedelta(0)) == "0s"


def test_in_a_model() -> None:
    class M(BaseModel):
        grace: Duration

    assert M(grace="2h").grace == timedelta(hours=2)  # type: ignore[arg-type]
    assert M(grace="2h").model_dump(mode="json") == {"grace": "2h"}  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not a duration"):
        M(grace="2 hours")  # type: ignore[arg-type]
