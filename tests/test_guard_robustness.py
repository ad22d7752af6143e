"""The guard under a database blip: results observed while their write fails are kept and
written on the next flush, so the failure count (and the pause) is not delayed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.guard.runner import Guard
from scheduler.clock import FakeClock
from scheduler.store import checks as check_store
from scheduler.store.checks import ResultRow
from scheduler.store.tables import check_results
from tests.http_server import HttpServer
from tests.test_guard_service import (
    checks_yaml,
    make_ctx,
    paused,
    start_guard,
    step_to,
    verdict,
    write_config,
)


def _results(db: Engine) -> list[tuple[datetime, str]]:
    with db.begin() as conn:
        rows = conn.execute(sa.select(check_results.c.at, check_results.c.outcome)
                            .where(check_results.c.check_name == "website")
                            .order_by(check_results.c.id))
        return [(r.at, r.outcome) for r in rows]


async def test_results_survive_failed_writes(db: Engine, t0: datetime, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    web = await HttpServer().start()
    clock = FakeClock(t0)
    guard = Guard(make_ctx(db, clock, write_config(tmp_path, checks_yaml(web.url))))
    try:
        t = await start_guard(guard, clock)
        await guard.tick()
        await step_to(guard, clock, t + timedelta(seconds=30))
        assert verdict(db) == "up" and paused(db) == {}
        await web.stop()

        real = check_store.record_results
        blips = {"left": 2}

        def flaky(conn: sa.Connection, rows: Sequence[ResultRow]) -> None:
            if blips["left"] > 0:
                blips["left"] -= 1
                raise sa.exc.OperationalError("INSERT INTO check_results", {},
                                              Exception("database is locked"))
            real(conn, rows)

        monkeypatch.setattr(check_store, "record_results", flaky)
        f = t + timedelta(seconds=60)
        for dt_s in (0, 5):  # failures 1 and 2: observed, but their write fails
            with pytest.raises(sa.exc.OperationalError):
                await step_to(guard, clock, f + timedelta(seconds=dt_s))
        assert len(guard._pending) == 2  # kept for the next flush, oldest first
        assert [o.at for o in guard._pending] == sorted(o.at for o in guard._pending)

        assert await step_to(guard, clock, f + timedelta(seconds=10)) == ["website"]
        assert blips["left"] == 0 and guard._pending == []
        assert verdict(db) == "down", "3 failures in a row were observed"
        assert paused(db) == {"digest": ["guard:website"], "posts": ["guard:website"]}
        fails = [(at, o) for at, o in _results(db) if o == "fail"]
        assert [at for at, _ in fails] == [f, f + timedelta(seconds=5), f + timedelta(seconds=10)]
        assert len(_results(db)) == 5  # 2 ok + 3 fail, none twice
    finally:
        await guard.close()
        await web.stop()
