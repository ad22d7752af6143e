"""Several nodes, one set of runs: liveness by the database's clock, adoption of a dead
node's runs without a restart, and fencing — a node whose run was adopted cannot overwrite the
adopter's outcome (issue 9, point 4; ARCHITECTURE.md, invariant 8).

Every test runs on SQLite and, when MARTECH_TEST_DATABASE_URL is set, on PostgreSQL. A node
"stops beating" by a beat planted in the past by the database's own clock: the nodes' clocks
(FakeClock here) play no part in who is alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine as SaEngine

from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.engine import Engine
from scheduler.engine.execute import move_run
from scheduler.kinds import RunResult
from scheduler.schedules import Schedule
from scheduler.store import dbclock, heartbeats
from scheduler.store import runs as run_store
from scheduler.store.runs import RunRow
from tests.engine_support import FakeCampaign, RecorderKind, make_ctx, make_registry, run_rows

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
DAILY = FakeCampaign("c", Schedule(cron="0 9 * * *"), misfire_grace=timedelta(days=1))


class NodeKind(RecorderKind):
    """Records, may block, and says which node produced the outcome."""

    def __init__(self, status: str = "done") -> None:
        super().__init__()
        self.status = status

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        await super().execute(ctx, campaign, run)
        return RunResult(self.status, f"by {ctx.node} under lease {run.lease_gen}")


@pytest.fixture
def contexts(db_url: str) -> Iterator[list[ServiceContext]]:
    made: list[ServiceContext] = []
    yield made
    for ctx in made:
        ctx.db.dispose()


def node(contexts: list[ServiceContext], db_url: str, tmp_path: Path, name: str,
         kind: RecorderKind | None = None, clock: FakeClock | None = None,
         heartbeat_interval_s: float = 15.0) -> tuple[Engine, RecorderKind]:
    kind = kind or NodeKind()
    ctx = make_ctx(db_url, tmp_path, clock or FakeClock(T0), [DAILY], node=name)
    ctx.settings = ctx.settings.model_copy(update={"heartbeat_interval_s": heartbeat_interval_s})
    contexts.append(ctx)
    engine = Engine(ctx, make_registry(kind))  # type: ignore[arg-type]
    engine.specs = engine.registry.specs(ctx.config)
    return engine, kind


def beat(engine: Engine, name: str, age_s: float) -> None:
    """``name``'s newest beat is ``age_s`` old by the database's clock."""
    with engine.ctx.begin() as conn:
        heartbeats.beat(conn, name, "service", dbclock.db_now(conn) - timedelta(seconds=age_s))


def test_liveness_is_the_databases_judgement(db: SaEngine) -> None:
    with db.begin() as conn:
        now = dbclock.db_now(conn)
        heartbeats.beat(conn, "fresh", "service", now - timedelta(seconds=5))
        heartbeats.beat(conn, "stale", "service", now - timedelta(seconds=61))
        heartbeats.beat(conn, "half", "service", now - timedelta(seconds=300))
        heartbeats.beat(conn, "half", "sender", now - timedelta(seconds=1))  # still sending
        heartbeats.beat(conn, "skewed", "service", now + timedelta(hours=2))  # a wrong clock
        assert heartbeats.dead_nodes(conn, 60) == {"stale"}
        assert heartbeats.dead_nodes(conn, 60, among={"fresh", "silent"}) == set()
        ages = {(b.node, b.role): b.age_s for b in heartbeats.latest(conn)}
    assert 60 < ages[("stale", "service")] < 120
    assert ages[("skewed", "service")] == 0.0  # a beat "from the future" is not negative


async def test_a_live_node_adopts_a_dead_nodes_run_without_a_restart(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    dead, _ = node(contexts, db_url, tmp_path, "dead")
    [claimed] = dead.claim_due(dead.specs.values())
    beat(dead, "dead", -3600)  # fresh for as long as this test may take on a busy machine
    a, kind = node(contexts, db_url, tmp_path, "node-a", heartbeat_interval_s=0.05)
    await a.start()
    try:
        assert kind.executed == []  # "dead" is alive at A's start: its run is left alone
        assert run_rows(db)[0].node == "dead"
        beat(a, "dead", 300)  # ... then it stops beating; A is not restarted
        await asyncio.wait_for(kind.event.wait(), 10)
    finally:
        await a.stop(timeout_s=5)
    [row] = run_rows(db)
    assert kind.executed == [("c", claimed.run_id)]
    assert (row.status, row.node, row.lease_gen) == ("done", "node-a", 1)
    assert row.detail == "by node-a under lease 1"


async def test_the_late_write_of_a_node_whose_run_was_adopted_is_refused(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        caplog: pytest.LogCaptureFixture) -> None:
    slow = NodeKind(status="failed")  # what the stopped node would have written
    slow.block = asyncio.Event()
    a, _ = node(contexts, db_url, tmp_path, "node-a", slow)
    b, _ = node(contexts, db_url, tmp_path, "node-b")
    [claimed] = a.claim_due(a.specs.values())
    beat(a, "node-b", 0)
    first = asyncio.create_task(a.execute(claimed.run_id))
    await asyncio.wait_for(slow.event.wait(), 5)  # A is running it ...
    beat(a, "node-a", 300)  # ... and stops beating (SIGSTOP, a partition, a long pause)
    assert b.recovery.adopt_orphans() == [claimed.run_id]
    assert (await b.execute(claimed.run_id)) is not None
    with caplog.at_level(logging.WARNING, logger="martech.engine"):
        slow.block.set()  # A comes back and finishes its (stale) work
        result = await asyncio.wait_for(first, 5)
    assert result is not None and result.status == "failed"
    [row] = run_rows(db)
    assert (row.status, row.node, row.lease_gen) == ("done", "node-b", 1)
    assert row.detail == "by node-b under lease 1"
    [refused] = [r for r in caplog.records if getattr(r, "action", None) == "fenced"]
    assert refused.run_id == claimed.run_id  # type: ignore[attr-defined]
    assert "node-b" in refused.getMessage() and "held lease 0" in refused.getMessage()


def test_every_status_change_is_conditional_on_the_lease(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    a, _ = node(contexts, db_url, tmp_path, "node-a")
    [claimed] = a.claim_due(a.specs.values())
    with a.ctx.begin() as conn:
        read = run_store.get(conn, claimed.run_id)
        assert read is not None and read.lease_gen == 0
        adopted = run_store.take_over(conn, read, "node-b")
        assert adopted is not None and adopted.lease_gen == 1
        assert run_store.take_over(conn, read, "node-c") is None  # the same stale read loses
        assert not run_store.still_owner(conn, read.id, read.fence)
        assert run_store.still_owner(conn, read.id, adopted.fence)
        # node-a, acting on what it read before the adoption, is refused everywhere:
        assert move_run(conn, read, "running", T0, "node-a") is None
        assert not run_store.set_status(conn, read.id, "done", T0, fence=read.fence)
        # the adopter's moves go through; one to another owner moves the lease on
        running = move_run(conn, adopted, "running", T0, "node-b")
        assert running is not None and running.lease_gen == 1
        assert run_store.set_status(conn, read.id, "done", T0, fence=running.fence)
    assert [(r.status, r.node) for r in run_rows(db)] == [("done", "node-b")]


def test_two_survivors_adopt_a_dead_nodes_run_once(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    dead, _ = node(contexts, db_url, tmp_path, "dead")
    [claimed] = dead.claim_due(dead.specs.values())
    beat(dead, "dead", 300)
    survivors = [node(contexts, db_url, tmp_path, f"node-{n}")[0] for n in "ab"]
    with ThreadPoolExecutor(2) as pool:
        adopted = list(pool.map(lambda e: e.recovery.adopt_orphans(), survivors))
    assert sorted(adopted) == [[], [claimed.run_id]]
    [row] = run_rows(db)
    assert row.node in ("node-a", "node-b") and row.lease_gen == 1


async def test_a_restart_resumes_its_runs_under_a_new_lease(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    """Even under one node name, an old incarnation (stopped, not dead) is fenced off."""
    old, _ = node(contexts, db_url, tmp_path, "node-a")
    [claimed] = old.claim_due(old.specs.values())
    with old.ctx.begin() as conn:
        stale = run_store.get(conn, claimed.run_id)
    assert stale is not None
    new, kind = node(contexts, db_url, tmp_path, "node-a")
    assert new.recovery.interrupted_runs() == [claimed.run_id]
    await new.execute(claimed.run_id)
    assert not old.executor.finish(stale, RunResult("failed", "the old incarnation"))
    [row] = run_rows(db)
    assert (row.status, row.lease_gen, row.detail) == ("done", 1, "by node-a under lease 1")
    assert len(kind.executed) == 1


def test_a_dead_nodes_run_too_late_to_run_is_given_up_by_its_adopter(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    dead, _ = node(contexts, db_url, tmp_path, "dead")
    [claimed] = dead.claim_due(dead.specs.values())
    beat(dead, "dead", 300)
    late = FakeClock(T0 + timedelta(days=2))  # past the one-day grace by the adopter's clock
    a, kind = node(contexts, db_url, tmp_path, "node-a", clock=late)
    assert a.recovery.adopt_orphans() == []
    [row] = run_rows(db)
    assert (row.status, row.node, row.lease_gen) == ("missed", "node-a", 1)
    assert kind.executed == [] and claimed.run_id == row.id


async def test_outcomes_finishing_together_share_one_commit_each_under_its_own_fence(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        caplog: pytest.LogCaptureFixture) -> None:
    """Group commit (engine/outcomes.py) keeps fencing per row: the stale incarnation's
    outcome is refused, the current one's is written, in the same transaction."""
    engine, _ = node(contexts, db_url, tmp_path, "node-a")
    [claimed] = engine.claim_due(engine.specs.values())
    with engine.ctx.begin() as conn:
        stale = run_store.get(conn, claimed.run_id)
        assert stale is not None
        current = run_store.take_over(conn, stale, "node-a")
    assert current is not None and current.lease_gen == stale.lease_gen + 1
    groups: list[int] = []
    real = engine.executor.finish_all

    def counted(outcomes: Sequence[tuple[RunRow, RunResult]]) -> list[bool]:
        groups.append(len(outcomes))
        return real(outcomes)

    engine.executor.finish_all = counted  # type: ignore[method-assign]
    outcomes = engine.executor.outcomes
    with caplog.at_level(logging.WARNING, logger="martech.engine"):
        answers = await asyncio.gather(outcomes.record(stale, RunResult("failed", "stale")),
                                       outcomes.record(current, RunResult("done", "current")))
    assert list(answers) == [False, True] and groups == [2]
    [row] = run_rows(db)
    assert (row.status, row.detail, row.lease_gen) == ("done", "current", current.lease_gen)
    assert [r.run_id for r in caplog.records  # type: ignore[attr-defined]
            if getattr(r, "action", None) == "fenced"] == [claimed.run_id]
