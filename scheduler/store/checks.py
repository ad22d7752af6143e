"""Check results (raw evidence) and check state (the guard's verdict), kept apart
(ARCHITECTURE.md, invariant 5)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.store.dialect import insert_for
from scheduler.store.tables import check_results, check_state


@dataclass(frozen=True)
class ResultRow:
    check_name: str
    at: datetime
    outcome: str  # ok | fail | unknown
    latency_ms: float | None
    detail: str | None
    node: str | None = None


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
