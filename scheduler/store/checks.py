"""Check results (raw evidence) and check state (the guard's verdict), kept apart
(ARCHITECTURE.md, invariant 5); and check leases, so each check is probed by one node at a
time cluster-wide (invariant 8)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.store.dbclock import sql_now
from scheduler.store.dialect import insert_for
from scheduler.store.tables import check_leases, check_results, check_state


@dataclass(frozen=True)
class ResultRow:
    check_name: str
    at: datetime
    outcome: str  # ok | fail | unknown
    latency_ms: float | None
    detail: str | None
    node: str | None = None
    findings: dict[str, Any] | None = None  # structured (page checks), for reports


@dataclass(frozen=True)
class StateRow:
    check_name: str
    verdict: str  # pending | up | down | unknown
    since: datetime
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    recent: str = ""  # oldest first: "o" ok, "x" fail
    last_result_at: datetime | None = None
    last_detail: str | None = None
    last_alert_at: datetime | None = None

    def with_(self, **changes: Any) -> StateRow:
        return replace(self, **changes)


def record_results(conn: sa.Connection, rows: Sequence[ResultRow]) -> None:
    if rows:
        conn.execute(sa.insert(check_results), [r.__dict__ for r in rows])


def latest_results(conn: sa.Connection, check_name: str, limit: int = 10) -> list[ResultRow]:
    stmt = (sa.select(check_results).where(check_results.c.check_name == check_name)
            .order_by(check_results.c.at.desc(), check_results.c.id.desc()).limit(limit))
    return [ResultRow(**{k: row._mapping[k] for k in ResultRow.__dataclass_fields__})
            for row in conn.execute(stmt)]


def _state(row: sa.Row[Any]) -> StateRow:
    return StateRow(**{k: row._mapping[k] for k in StateRow.__dataclass_fields__})


def get_state(conn: sa.Connection, check_name: str) -> StateRow | None:
    row = conn.execute(sa.select(check_state).where(check_state.c.check_name == check_name)
                       ).first()
    return _state(row) if row else None


def all_states(conn: sa.Connection, *, lock: bool = False) -> dict[str, StateRow]:
    """Every verdict; ``lock`` takes row locks on PostgreSQL so two guards serialise."""
    return states(conn, lock=lock)


def states(conn: sa.Connection, names: Iterable[str] | None = None, *,
           verdict: str | None = None, lock: bool = False) -> dict[str, StateRow]:
    """Verdicts of ``names`` (all when None), optionally only those with ``verdict``.

    The guard reads just the checks it is deciding on: reading all of them on every batch
    dominated its CPU with 1,000 checks. ``lock`` takes row locks on PostgreSQL, in name
    order so two guards locking overlapping sets cannot deadlock.
    """
    stmt = sa.select(check_state)
    if names is not None:
        wanted = sorted(set(names))
        if not wanted:
            return {}
        stmt = stmt.where(check_state.c.check_name.in_(wanted))
    if verdict is not None:
        stmt = stmt.where(check_state.c.verdict == verdict)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.order_by(check_state.c.check_name).with_for_update()
    return {row.check_name: _state(row) for row in conn.execute(stmt)}


_STATE_FIELDS = tuple(StateRow.__dataclass_fields__)


def save_states(conn: sa.Connection, rows: Sequence[StateRow]) -> None:
    """Upsert verdicts in one executemany, in name order (lock order on PostgreSQL)."""
    if not rows:
        return
    stmt = insert_for(conn, check_state)
    stmt = stmt.on_conflict_do_update(
        index_elements=[check_state.c.check_name],
        set_={k: stmt.excluded[k] for k in _STATE_FIELDS if k != "check_name"})
    conn.execute(stmt, [{k: getattr(r, k) for k in _STATE_FIELDS}
                        for r in sorted(rows, key=lambda r: r.check_name)])


def delete_results_before(conn: sa.Connection, before: datetime) -> int:
    """Retention: raw results older than ``before`` go; verdicts stay."""
    return conn.execute(sa.delete(check_results).where(check_results.c.at < before)).rowcount


# -- leases: who probes each check -------------------------------------------------------------

def hold_leases(conn: sa.Connection, names: Iterable[str], node: str, lease_s: float
                ) -> dict[str, int]:
    """Take or renew, for ``node``, the leases of ``names`` that are free, already its own, or
    expired by the database's clock; ``{name: generation}`` of every lease it now holds.

    The generation (the fencing token of the check's results) moves on whenever the lease
    changes hands. One statement for all names; rows are taken in name order, so two nodes'
    passes cannot deadlock.
    """
    rows = [{"check_name": n, "node": node} for n in sorted(set(names))]
    if not rows:
        return {}
    t = check_leases
    base = insert_for(conn, t).values(gen=1, expires_at=sql_now(lease_s))
    stmt = base.on_conflict_do_update(
        index_elements=[t.c.check_name],
        set_={"node": base.excluded.node,
              "gen": sa.case((t.c.node == base.excluded.node, t.c.gen), else_=t.c.gen + 1),
              "expires_at": base.excluded.expires_at},
        where=sa.or_(t.c.node == base.excluded.node, t.c.expires_at < sql_now()),
    ).returning(t.c.check_name, t.c.gen)
    return {row.check_name: int(row.gen) for row in conn.execute(stmt, rows)}


def lease_holders(conn: sa.Connection, names: Iterable[str], *, lock: bool = False
                  ) -> dict[str, tuple[str, int]]:
    """``{name: (node, generation)}`` of the leases of ``names``; ``lock`` (PostgreSQL) holds
    them until commit, so no lease changes hands while results are being recorded."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    t = check_leases
    stmt = sa.select(t.c.check_name, t.c.node, t.c.gen).where(t.c.check_name.in_(wanted))
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.order_by(t.c.check_name).with_for_update()
    return {row.check_name: (row.node, int(row.gen)) for row in conn.execute(stmt)}


def release_leases(conn: sa.Connection, node: str) -> int:
    """A guard stopping cleanly hands its checks over at once instead of at expiry."""
    t = check_leases
    stmt = sa.update(t).where(t.c.node == node).values(expires_at=sql_now(-1))
    return len(conn.execute(stmt.returning(t.c.check_name)).all())


def live_leases_by_node(conn: sa.Connection) -> dict[str, int]:
    """How many unexpired check leases each node holds (``martech status``)."""
    t = check_leases
    stmt = (sa.select(t.c.node, sa.func.count()).where(t.c.expires_at >= sql_now())
            .group_by(t.c.node))
    return {row[0]: int(row[1]) for row in conn.execute(stmt)}
