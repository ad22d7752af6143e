"""The notification outbox: alerts, reminders and report mails are rows first, sent after.

Written in the same transaction as the decision that caused them, so a crash between
"decided" and "sent" loses nothing; ``dedupe_key`` makes enqueueing idempotent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.store.dialect import insert_for
from scheduler.store.tables import outbox


def enqueue(conn: sa.Connection, *, topic: str, channel: str, target: str,
            payload: dict[str, Any], now: datetime, dedupe_key: str | None = None) -> int | None:
    """Add one notification; return its id, or None if ``dedupe_key`` was already queued.

    ``channel`` is ``email`` (payload: subject, text, optional html, from) or ``webhook``
    (payload: the JSON body to POST, plus optional ``_format``).
    """
    stmt = insert_for(conn, outbox).values(
        created_at=now, topic=topic, channel=channel, target=target, payload=payload,
        status="pending", attempts=0, next_attempt_at=now, dedupe_key=dedupe_key,
    ).on_conflict_do_nothing().returning(outbox.c.id)
    row = conn.execute(stmt).first()
    return row.id if row else None
