"""Three guards on one database probe each check once per interval between them, and a down
check is declared after the configured number of results — not three times sooner (issue 9,
point 4; ARCHITECTURE.md, invariants 5, 8).

Three ``Guard`` objects on three contexts with different node names share one database and one
fake clock; a real HTTP server counts the probes. On SQLite and, when configured, PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.guard.checks.base import CheckResult
from jobs.guard.decide import Observed
from jobs.guard.runner import LEASE_RENEWALS, Guard
from martech.compose import load_config
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.settings import Settings
from scheduler.store import checks as check_store
from scheduler.store.dbclock import sql_now
from scheduler.store.tables import check_leases, check_results
from tests.conftest import REPO
from tests.http_server import HttpServer
from tests.test_guard_service import checks_yaml, paused, write_config

NODES = ("node-1", "node-2", "node-3")


@pytest.fixture
async def web() -> AsyncIterator[HttpServer]:
    server = await HttpServer().start()
    yield server
    await server.stop()


@pytest.fixture
def engines(db_url: str) -> Iterator[list[Engine]]:
    from scheduler.store.db import make_engine

    made: list[Engine] = []

    def make() -> Engine:
        made.append(make_engine(db_url))
        return made[-1]

    yield [make() for _ in NODES]  # one engine (connection pool) per node, as processes have
    for engine in made:
        engine.dispose()


def guards_for(engines: list[Engine], clock: FakeClock, cfg: Path,
               nodes: tuple[str, ...] = NODES) -> list[Guard]:
    out = []
    for db, node in zip(engines, nodes, strict=True):
        settings = Settings(database_url=str(db.url), config_dir=cfg,
                            templates_dir=REPO / "templates" / "email",
                            var_dir=cfg.parent / "var", node_name=node,
                            _env_file=None)  # type: ignore[call-arg]
        out.append(Guard(ServiceContext(settings, load_config(cfg), db, clock)))
    return out


async def tick_all(guards: list[Guard], clock: FakeClock, when: datetime) -> dict[str, list[str]]:
    clock.set(when)
    return {g.ctx.node: started for g in guards if (started := await g.tick())}


def results(db: Engine) -> list[tuple[str, str | None]]:
    with db.begin() as conn:
        return [(r.outcome, r.node) for r in conn.execute(
            sa.select(check_results).order_by(check_results.c.id))]


async def drive(guards: list[Guard], clock: FakeClock, web: HttpServer, first: datetime
                ) -> list[tuple[int, str]]:
    """Two minutes in one-second steps, every guard ticking each second; the site fails
    from 60 s on. Returns (second, node) of every probe started."""
    probes = []
    for second in range(121):
        if second == 60:
            web.status = 500
        clock.set(first + timedelta(seconds=second))
        for guard in guards:
            probes += [(second, guard.ctx.node) for _ in await guard.tick()]
    return probes


async def alone(tmp_path: Path, t0: datetime, web: HttpServer, cfg: Path) -> list[int]:
    """The reference: the same two minutes with one guard on a database of its own."""
    from scheduler.store.db import make_engine, upgrade

    db = make_engine(f"sqlite:///{tmp_path}/alone.db")
    upgrade(db)
    clock = FakeClock(t0)
    [guard] = guards_for([db], clock, cfg, nodes=("alone",))
    try:
        await guard.start()
        probes = await drive([guard], clock, web, guard.entries["website"].next_due)
    finally:
        await guard.close()
        db.dispose()
    web.status, web.hits = 200, 0
    return [second for second, _node in probes]


async def test_three_guards_probe_as_one_and_decide_from_results_not_nodes(
        db: Engine, engines: list[Engine], t0: datetime, tmp_path: Path,
        web: HttpServer) -> None:
    cfg = write_config(tmp_path, checks_yaml(web.url))
    expected = await alone(tmp_path, t0, web, cfg)
    clock = FakeClock(t0)
    guards = guards_for(engines, clock, cfg)
    for guard in guards:
        await guard.start()
    try:
        [holder] = [g for g in guards if "website" in g.leases]  # one node probes
        first = guards[0].entries["website"].next_due
        assert all(g.entries["website"].next_due == first for g in guards)  # same phase
        probes = await drive(guards, clock, web, first)
    finally:
        for guard in guards:
            await guard.close()
    # Exactly the probes one guard makes alone — each interval (and retry) probed once.
    assert [second for second, _node in probes] == expected
    assert {node for _second, node in probes} == {holder.ctx.node}
    assert web.hits == len(expected)
    for guard in guards:
        if guard is not holder:
            assert guard.stats.runs == 0 and guard.stats.not_leased > 0
    # Down after failure_threshold (3) failed results, not after one round of three nodes.
    with db.begin() as conn:
        fails = [r.at for r in conn.execute(
            sa.select(check_results).where(check_results.c.outcome == "fail")
            .order_by(check_results.c.at))]
        state = check_store.get_state(conn, "website")
    assert state is not None and state.verdict == "down"
    assert state.since == fails[2]  # the third failure decided it
    assert paused(db) == {"digest": ["guard:website"], "posts": ["guard:website"]}
    assert {node for _outcome, node in results(db)} == {holder.ctx.node}


async def test_a_dead_guards_checks_pass_to_one_survivor_and_its_late_results_are_dropped(
        db: Engine, engines: list[Engine], t0: datetime, tmp_path: Path,
        web: HttpServer) -> None:
    clock = FakeClock(t0)
    guards = guards_for(engines, clock, write_config(tmp_path, checks_yaml(web.url)))
    for guard in guards:
        await guard.start()
    try:
        [dead] = [g for g in guards if "website" in g.leases]
        old_gen = dead.leases["website"]
        first = dead.entries["website"].next_due
        assert await tick_all(guards, clock, first) == {dead.ctx.node: ["website"]}
        survivors = [g for g in guards if g is not dead]
        with db.begin() as conn:  # `dead` stopped renewing: by the database's clock, expired
            conn.execute(sa.update(check_leases).values(expires_at=sql_now(-1)))
        # The survivors' next lease pass (every lease_s / LEASE_RENEWALS) takes it over.
        renew = timedelta(seconds=dead.lease_s / LEASE_RENEWALS)
        await tick_all(survivors, clock, first + renew)
        [heir] = [g for g in survivors if "website" in g.leases]
        assert heir.leases["website"] == old_gen + 1
        # The next interval is probed once, by the heir.
        started = await tick_all(survivors, clock, first + timedelta(seconds=30))
        assert started == {heir.ctx.node: ["website"]}
        assert web.hits == 2
        # `dead` comes back with a result it probed under its old lease: dropped, not counted.
        dead._pending.append(Observed("website", clock.now(),
                                      CheckResult("fail", 1.0, "stale"), old_gen))
        await dead.flush()
        assert results(db) == [("ok", dead.ctx.node), ("ok", heir.ctx.node)]
        # And its next lease pass finds the lease taken: it stops probing.
        await dead.tick(first + timedelta(seconds=30) + renew)
        assert "website" not in dead.leases
    finally:
        for guard in guards:
            await guard.close()


async def test_a_guard_stopping_cleanly_hands_its_checks_over_at_once(
        db: Engine, engines: list[Engine], t0: datetime, tmp_path: Path,
        web: HttpServer) -> None:
    clock = FakeClock(t0)
    a, b, _c = guards_for(engines, clock, write_config(tmp_path, checks_yaml(web.url)))
    await a.start()
    assert "website" in a.leases
    a.ctx.stopping.set()
    await asyncio.wait_for(a.run(), 10)  # run() starts, sees `stopping`, releases, returns
    await b.start()
    assert "website" in b.leases  # no waiting for the lease to expire
    with db.begin() as conn:
        assert check_store.live_leases_by_node(conn) == {"node-2": 1}
    await b.close()
