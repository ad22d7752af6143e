"""Node heartbeats: each role of each node says it is alive (``martech health`` reads them)."""

from __future__ import annotations

import os
from datetime import datetime

import sqlalchemy as sa

from scheduler.store.dialect import insert_for
from scheduler.store.tables import node_heartbeats


def beat(conn: sa.Connection, node: str, role: str, now: datetime, info: str | None = None
         ) -> None:
    base = insert_for(conn, node_heartbeats)
    stmt = base.values(node=node, role=role, at=now, pid=os.getpid(), info=info)
    stmt = stmt.on_conflict_do_update(
        index_elements=[node_heartbeats.c.node, node_heartbeats.c.role],
        set_={"at": now, "pid": os.getpid(), "info": info},
    )
    conn.execute(stmt)


def latest(conn: sa.Connection) -> list[sa.Row[tuple[str, str, datetime, int, str]]]:
    stmt = sa.select(node_heartbeats.c.node, node_heartbeats.c.role, node_heartbeats.c.at,
                     node_heartbeats.c.pid, node_heartbeats.c.info)
    return list(conn.execute(stmt.order_by(node_heartbeats.c.node, node_heartbeats.c.role)))
