"""Node heartbeats: each role of each node says it is alive (``martech health``, ``status``,
and the adoption of a dead node's work read them).

Beats are stamped with the database's clock and their age is computed by the database
(``dbclock``), so liveness never compares one machine's clock with another's (ARCHITECTURE.md,
invariant 8). A node is dead when it has beaten before and every one of its beats is older
than :func:`stale_after_s`; a node that never beat (a test, a one-off tool) is never presumed
dead: only its leases expire.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from scheduler.store.dbclock import sql_age_s, sql_now
from scheduler.store.dialect import insert_for
from scheduler.store.tables import node_heartbeats

HEARTBEATS_TO_DEATH = 4  # a node whose newest beat is this many intervals old is dead


def stale_after_s(heartbeat_interval_s: float) -> float:
    """How old a node's newest beat may be before the node counts as dead."""
    return heartbeat_interval_s * HEARTBEATS_TO_DEATH


@dataclass(frozen=True)
class Beat:
    node: str
    role: str
    at: datetime  # the database's clock
    age_s: float  # by the database's clock, at the time of the read
    pid: int | None
    info: str | None


def beat(conn: sa.Connection, node: str, role: str, at: datetime | None = None,
         info: str | None = None) -> None:
    """Record that ``node``'s ``role`` is alive, at the database's time.

    ``at`` stamps an explicit time instead (a tool or a test planting an old beat); services
    never pass it.
    """
    stamp = sql_now() if at is None else sa.literal(at, node_heartbeats.c.at.type)
    base = insert_for(conn, node_heartbeats)
    stmt = base.values(node=node, role=role, at=stamp, pid=os.getpid(), info=info)
    stmt = stmt.on_conflict_do_update(
        index_elements=[node_heartbeats.c.node, node_heartbeats.c.role],
        set_={"at": base.excluded.at, "pid": os.getpid(), "info": info},
    )
    conn.execute(stmt)


def latest(conn: sa.Connection) -> list[Beat]:
    """Every beat, by node and role, with its age by the database's clock."""
    t = node_heartbeats
    stmt = sa.select(t.c.node, t.c.role, t.c.at, sql_age_s(t.c.at).label("age_s"), t.c.pid,
                     t.c.info).order_by(t.c.node, t.c.role)
    return [Beat(r.node, r.role, r.at, max(float(r.age_s), 0.0), r.pid, r.info)
            for r in conn.execute(stmt)]


def age_of(conn: sa.Connection, node: str, role: str) -> float | None:
    """Seconds since ``node``'s ``role`` last beat, by the database's clock; None if never."""
    t = node_heartbeats
    value = conn.execute(sa.select(sql_age_s(t.c.at)).where(t.c.node == node, t.c.role == role)
                         ).scalar_one_or_none()
    return None if value is None else max(float(value), 0.0)


def dead_nodes(conn: sa.Connection, stale_after: float,
               among: Iterable[str] | None = None) -> set[str]:
    """Nodes whose every beat is older than ``stale_after`` seconds (the database judges)."""
    t = node_heartbeats
    stmt = (sa.select(t.c.node).group_by(t.c.node)
            .having(sa.func.max(t.c.at) < sql_now(-stale_after)))
    if among is not None:
        names = sorted(set(among))
        if not names:
            return set()
        stmt = stmt.where(t.c.node.in_(names))
    return set(conn.execute(stmt).scalars())
