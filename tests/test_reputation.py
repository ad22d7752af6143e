"""The complaint rate against Gmail's and Yahoo's lines: warn above 0.1%, over at 0.3%."""

from __future__ import annotations

import pytest

from jobs.report.reputation import Reputation


@pytest.mark.parametrize(("complaints", "level"), [(0, "ok"), (1, "ok"), (2, "warn"),
                                                   (3, "over"), (9, "over")])
def test_levels(complaints: int, level: str) -> None:
    rep = Reputation(sent=1000, complaints=complaints)
    assert rep.level == level
    assert ("WARNING" in rep.summary()) == (level == "warn")


def test_nothing_sent_has_no_rate() -> None:
    assert Reputation().complaint_rate is None and Reputation().level == "ok"
