"""The suppression list: lower-cased, and add() tells a new entry from a repeat on both engines."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from scheduler.store import suppressions


def test_add_reports_new_only(db: Engine) -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    with db.begin() as conn:
        assert suppressions.add(conn, "A@x.example", "hard_bounce", now) is True
        assert suppressions.add(conn, "a@x.example", "unsubscribed", now) is False
        assert suppressions.is_suppressed(conn, "a@X.example")
