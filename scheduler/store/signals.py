"""Announcing a change to every node: on PostgreSQL, ``NOTIFY martech_<topic>`` in the same
transaction as the change, so it is delivered when (and only if) the change commits.

The listening side is ``scheduler/signals.py``. Topics are coarse on purpose (a waiter re-reads
the state it cares about), and the payload stays empty: PostgreSQL folds identical
notifications of one transaction into one, and no address ever travels in a NOTIFY.
"""

from __future__ import annotations

import sqlalchemy as sa

PAUSES = "pauses"  # a pause reason was added or removed (store/pauses.py)
SUPPRESSIONS = "suppressions"  # an address was suppressed (store/suppressions.py)
TOPICS = (PAUSES, SUPPRESSIONS)
CHANNEL_PREFIX = "martech_"
_PENDING = "martech_signals"  # key in the connection's info: topics to fire in-process


def channel(topic: str) -> str:
    return CHANNEL_PREFIX + topic


def topic_of(channel_name: str) -> str:
    return channel_name.removeprefix(CHANNEL_PREFIX)


def notify(conn: sa.Connection, topic: str) -> None:
    """Wake every node's waiters on ``topic`` once this transaction commits.

    Also noted on the connection, so ``ServiceContext.begin`` wakes this process's own
    waiters after the commit without a round trip (the only way on SQLite).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_notify(channel(topic), "")))
    conn.info.setdefault(_PENDING, set()).add(topic)


def take_pending(conn: sa.Connection) -> set[str]:
    """The topics notified on ``conn`` since the last call (and forget them)."""
    pending: set[str] = conn.info.pop(_PENDING, set())
    return pending
