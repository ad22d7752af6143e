"""Runs (one row per scheduled occurrence) and per-schedule cursors.

A run's owner is ``node``; its fencing token is ``lease_gen``, bumped by :func:`take_over`
when a live node adopts a dead one's run (or a restart resumes its own). Status changes made
by the executing node carry a :class:`Fence` and are refused once the token moved on, so a
node that was stopped past its lease cannot overwrite the adopter's outcome (ARCHITECTURE.md,
invariant 8).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scheduler.clock import utc
from scheduler.store.dialect import insert_for
from scheduler.store.tables import runs, schedule_cursors

ACTIVE = ("pending", "running", "held")
FINISHED = ("done", "failed", "missed", "skipped", "coalesced")


@dataclass(frozen=True)
class Claim:
    """An occurrence to insert; whoever's insert succeeds owns the run."""

    schedule_key: str
    campaign: str
    kind: str
    scheduled_at: datetime
    local_slot: str
    status: str = "pending"
    trigger: str = "schedule"
    detail: str | None = None


@dataclass(frozen=True)
class Fence:
    """Who may change a run: the owner and lease generation it was read with."""

    node: str | None
    lease_gen: int


@dataclass(frozen=True)
class RunRow:
    id: int
    schedule_key: str
    campaign: str
    kind: str
    scheduled_at: datetime
    local_slot: str
    trigger: str
    status: str
    node: str | None
    claimed_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    detail: str | None
    stats: dict[str, Any] | None
    lease_gen: int = 0

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> RunRow:
        return cls(**{key: row._mapping[key] for key in cls.__dataclass_fields__})

    @property
    def fence(self) -> Fence:
        return Fence(self.node, self.lease_gen)


def fenced(fence: Fence) -> sa.ColumnElement[bool]:
    """The WHERE clause of a status change made under ``fence``."""
    owner = runs.c.node.is_(None) if fence.node is None else runs.c.node == fence.node
    return sa.and_(owner, runs.c.lease_gen == fence.lease_gen)


def claim(conn: sa.Connection, claims: Sequence[Claim], node: str, now: datetime
          ) -> dict[tuple[str, datetime], int]:
    """Insert run rows; return ``{(schedule_key, scheduled_at): run_id}`` for those we won.

    A conflict on either unique constraint (occurrence or local slot) is a silent no-op:
    another node, or an earlier catch-up, owns that occurrence (ARCHITECTURE.md, invariant 2).
    """
    if not claims:
        return {}
    won: dict[tuple[str, datetime], int] = {}
    rows = [
        {
            "schedule_key": c.schedule_key, "campaign": c.campaign, "kind": c.kind,
            "scheduled_at": c.scheduled_at, "local_slot": c.local_slot, "status": c.status,
            "trigger": c.trigger, "node": node, "claimed_at": now, "detail": c.detail,
        }
        for c in claims
    ]
    stmt = (
        insert_for(conn, runs)
        .on_conflict_do_nothing()
        .returning(runs.c.id, runs.c.schedule_key, runs.c.scheduled_at)
    )
    # executemany: one statement compiled (and cached) once; SQLAlchemy batches the rows
    # into multi-row INSERTs ("insertmanyvalues") within the driver's parameter limit. A
    # `.values(rows)` statement would be compiled afresh per call (~0.5 s per 1,000 rows).
    for row in conn.execute(stmt, rows):
        won[(row.schedule_key, utc(row.scheduled_at))] = row.id
    return won


def start(conn: sa.Connection, run_ids: Sequence[int], node: str, now: datetime) -> set[int]:
    """Move pending runs owned by ``node`` to running; return the ids that moved.

    Conditional on status and owner, like every run move, so a run someone else moved
    meanwhile is left alone (and not returned).
    """
    if not run_ids:
        return set()
    stmt = (sa.update(runs)
            .where(runs.c.id.in_(list(run_ids)), runs.c.status == "pending", runs.c.node == node)
            .values(status="running", started_at=now).returning(runs.c.id))
    return set(conn.execute(stmt).scalars())


def cursors(conn: sa.Connection, keys: Iterable[str] | None = None) -> dict[str, datetime]:
    stmt = sa.select(schedule_cursors.c.schedule_key, schedule_cursors.c.last_at)
    if keys is not None:
        stmt = stmt.where(schedule_cursors.c.schedule_key.in_(list(keys)))
    return {row.schedule_key: row.last_at for row in conn.execute(stmt)}


def advance_cursors(conn: sa.Connection, moves: dict[str, tuple[str, datetime]],
                    now: datetime) -> None:
    """Set each schedule's cursor to at least the given time (never backwards)."""
    if not moves:
        return
    table = schedule_cursors
    rows = [{"schedule_key": key, "campaign": campaign, "last_at": at, "updated_at": now}
            for key, (campaign, at) in moves.items()]
    base = insert_for(conn, table)
    stmt = base.on_conflict_do_update(
        index_elements=[table.c.schedule_key],
        set_={
            "last_at": sa.case(
                (base.excluded.last_at > table.c.last_at, base.excluded.last_at),
                else_=table.c.last_at,
            ),
            "updated_at": base.excluded.updated_at,
        },
    )
    conn.execute(stmt, rows)  # executemany of one cached statement (see claim)


def get(conn: sa.Connection, run_id: int) -> RunRow | None:
    row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
    return RunRow.from_row(row) if row else None


def set_status(conn: sa.Connection, run_id: int, status: str, now: datetime, *,
               detail: str | None = None, stats: dict[str, Any] | None = None,
               fence: Fence | None = None) -> bool:
    """Set a run's status; True if it changed. With ``fence``, only while the run is still
    owned under it (the executing node's outcome); without, unconditionally (tools, tests).
    """
    values: dict[str, Any] = {"status": status}
    if status == "running":
        values["started_at"] = now
    if status in FINISHED:
        values["finished_at"] = now
    if detail is not None:
        values["detail"] = detail
    if stats is not None:
        values["stats"] = stats
    stmt = sa.update(runs).where(runs.c.id == run_id)
    if fence is not None:
        stmt = stmt.where(fenced(fence))
    # RETURNING tells, whatever rowcount the driver reports.
    return conn.execute(stmt.values(**values).returning(runs.c.id)).first() is not None


def take_over(conn: sa.Connection, run: RunRow, node: str) -> RunRow | None:
    """Make ``node`` the owner of ``run`` under a new lease generation, if nobody moved it
    since it was read; the new row, or None when another node won."""
    stmt = (sa.update(runs)
            .where(runs.c.id == run.id, runs.c.status == run.status, fenced(run.fence))
            .values(node=node, lease_gen=runs.c.lease_gen + 1)
            .returning(runs))
    row = conn.execute(stmt).first()
    return RunRow.from_row(row) if row else None


def still_owner(conn: sa.Connection, run_id: int, fence: Fence) -> bool:
    """Is the run still held under ``fence``? A long job (a newsletter between batches) may
    ask, to stop early once another node has adopted its run."""
    stmt = sa.select(sa.literal(1)).where(runs.c.id == run_id, fenced(fence))
    return conn.execute(stmt).first() is not None


def active_of(conn: sa.Connection, nodes: Iterable[str], statuses: Sequence[str] = ACTIVE
              ) -> list[RunRow]:
    """Runs in ``statuses`` owned by any of ``nodes``, oldest first."""
    names = sorted(set(nodes))
    if not names:
        return []
    stmt = (sa.select(runs).where(runs.c.status.in_(statuses), runs.c.node.in_(names))
            .order_by(runs.c.scheduled_at))
    return [RunRow.from_row(r) for r in conn.execute(stmt)]


def count_by_node(conn: sa.Connection, statuses: Sequence[str] = ACTIVE
                  ) -> dict[str, dict[str, int]]:
    """``{node: {status: n}}`` of runs in ``statuses`` (``martech status``)."""
    stmt = (sa.select(runs.c.node, runs.c.status, sa.func.count())
            .where(runs.c.status.in_(statuses), runs.c.node.is_not(None))
            .group_by(runs.c.node, runs.c.status))
    out: dict[str, dict[str, int]] = {}
    for node, status, n in conn.execute(stmt):
        out.setdefault(node, {})[status] = int(n)
    return out


def by_status(conn: sa.Connection, statuses: Sequence[str], campaign: str | None = None
              ) -> list[RunRow]:
    stmt = sa.select(runs).where(runs.c.status.in_(statuses)).order_by(runs.c.scheduled_at)
    if campaign is not None:
        stmt = stmt.where(runs.c.campaign == campaign)
    return [RunRow.from_row(r) for r in conn.execute(stmt)]


def latest_per_campaign(conn: sa.Connection) -> dict[str, RunRow]:
    """The most recent run of each campaign (by scheduled time)."""
    latest = (
        sa.select(runs.c.campaign, sa.func.max(runs.c.id).label("id"))
        .where(runs.c.status.notin_(("missed", "coalesced")))
        .group_by(runs.c.campaign)
        .subquery()
    )
    stmt = sa.select(runs).join(latest, runs.c.id == latest.c.id)
    return {row.campaign: RunRow.from_row(row) for row in conn.execute(stmt)}


def missed_counts(conn: sa.Connection) -> dict[str, int]:
    stmt = (
        sa.select(runs.c.campaign, sa.func.count())
        .where(runs.c.status == "missed")
        .group_by(runs.c.campaign)
    )
    return {row[0]: row[1] for row in conn.execute(stmt)}


def for_campaign(conn: sa.Connection, campaign: str, limit: int = 50) -> list[RunRow]:
    stmt = (
        sa.select(runs).where(runs.c.campaign == campaign)
        .order_by(runs.c.scheduled_at.desc()).limit(limit)
    )
    return [RunRow.from_row(r) for r in conn.execute(stmt)]
