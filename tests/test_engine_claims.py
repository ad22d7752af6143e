"""Occurrence claims: idempotent across engines, catch-up after downtime, cursors, DST slots."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine as SaEngine

from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.engine import Engine, plan_claims
from scheduler.schedules import Schedule
from scheduler.store import dbclock, heartbeats, pauses
from scheduler.store import runs as run_store
from scheduler.store.runs import Claim
from scheduler.store.tables import schedule_cursors
from tests.engine_support import (
    FakeCampaign,
    RecorderKind,
    make_ctx,
    make_registry,
    run_rows,
)

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
EVERY_MIN = Schedule(interval=timedelta(minutes=1))


@pytest.fixture
def contexts(db_url: str, tmp_path: Path) -> Iterator[list[ServiceContext]]:
    made: list[ServiceContext] = []
    yield made
    for ctx in made:
        ctx.db.dispose()


def engine_for(contexts: list[ServiceContext], db_url: str, tmp_path: Path, clock: FakeClock,
               campaigns: list[FakeCampaign], kind: RecorderKind | None = None,
               node: str = "node-a") -> tuple[Engine, RecorderKind]:
    kind = kind or RecorderKind()
    ctx = make_ctx(db_url, tmp_path, clock, campaigns, node=node)
    contexts.append(ctx)
    engine = Engine(ctx, make_registry(kind))
    engine.specs = engine.registry.specs(ctx.config)
    return engine, kind


def cursor_of(db: SaEngine, key: str) -> datetime | None:
    with db.connect() as conn:
        return conn.execute(sa.select(schedule_cursors.c.last_at)
                            .where(schedule_cursors.c.schedule_key == key)).scalar()


# -- two engines, one database ---------------------------------------------------------------

def test_two_engines_claim_concurrently_exactly_one_run_per_occurrence(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    campaigns = [FakeCampaign(f"c{i}", EVERY_MIN) for i in range(5)]
    clock = FakeClock(T0)
    a, _ = engine_for(contexts, db_url, tmp_path, clock, campaigns, node="node-a")
    b, _ = engine_for(contexts, db_url, tmp_path, clock, campaigns, node="node-b")
    owned: dict[str, list[int]] = {"a": [], "b": []}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _tick in range(6):
            barrier = threading.Barrier(2)

            def claim(engine: Engine, barrier: threading.Barrier = barrier) -> list[int]:
                barrier.wait()
                return [c.run_id for c in engine.claim_due(engine.specs.values())]

            fa, fb = pool.submit(claim, a), pool.submit(claim, b)
            owned["a"] += fa.result()
            owned["b"] += fb.result()
            clock.advance(timedelta(minutes=1))
    rows = run_rows(db)
    # Six wake-ups x five schedules: each occurrence exactly one row, owned by one engine.
    assert len(rows) == 30
    assert len({(r.schedule_key, r.scheduled_at) for r in rows}) == 30
    assert sorted(owned["a"] + owned["b"]) == sorted(r.id for r in rows)
    assert not set(owned["a"]) & set(owned["b"])
    assert {r.node for r in rows} <= {"node-a", "node-b"}
    assert all(r.status == "pending" for r in rows)


async def test_two_engines_gather_same_occurrence(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    campaigns = [FakeCampaign("weekly", Schedule(cron="0 9 * * MON"))]
    clock = FakeClock(T0)  # Monday 09:00 UTC: due exactly now
    a, _ = engine_for(contexts, db_url, tmp_path, clock, campaigns, node="node-a")
    b, _ = engine_for(contexts, db_url, tmp_path, clock, campaigns, node="node-b")
    results = await asyncio.gather(
        a.ctx.in_thread(a.claim_due, list(a.specs.values())),
        b.ctx.in_thread(b.claim_due, list(b.specs.values())),
    )
    assert sum(len(r) for r in results) == 1
    rows = run_rows(db)
    assert [(r.campaign, r.scheduled_at, r.status) for r in rows] == [("weekly", T0, "pending")]


def test_claim_is_idempotent_when_repeated(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    engine, _ = engine_for(contexts, db_url, tmp_path, clock, [FakeCampaign("c", EVERY_MIN)])
    first = engine.claim_due(engine.specs.values())
    again = engine.claim_due(engine.specs.values())
    assert len(first) == 1 and again == []
    # Even a direct re-insert of the same occurrence (another node's stale plan) is a no-op.
    with engine.ctx.begin() as conn:
        won = run_store.claim(conn, [Claim("c", "c", "recorder", T0, "2026-11-23T09:00:00Z")],
                              "node-z", T0)
    assert won == {}
    assert len(run_rows(db)) == 1


# -- catch-up after downtime -----------------------------------------------------------------

def test_new_schedule_does_not_backfill(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0 + timedelta(seconds=30))
    engine, _ = engine_for(contexts, db_url, tmp_path, clock, [FakeCampaign("c", EVERY_MIN)])
    assert engine.claim_due(engine.specs.values()) == []
    assert run_rows(db) == []
    assert cursor_of(db, "c") == clock.now()
    clock.advance(timedelta(seconds=30))
    assert len(engine.claim_due(engine.specs.values())) == 1


def test_downtime_within_grace_runs_once_coalesced(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    campaign = FakeCampaign("c", EVERY_MIN, misfire_grace=timedelta(minutes=30))
    engine, _ = engine_for(contexts, db_url, tmp_path, clock, [campaign])
    assert len(engine.claim_due(engine.specs.values())) == 1
    clock.advance(timedelta(minutes=10, seconds=5))  # down for ten minutes
    claimed = engine.claim_due(engine.specs.values())
    assert [c.scheduled_at for c in claimed] == [T0 + timedelta(minutes=10)]
    rows = run_rows(db)[1:]
    assert [r.status for r in rows] == ["coalesced"] * 9 + ["pending"]
    assert cursor_of(db, "c") == T0 + timedelta(minutes=10)


def test_downtime_past_grace_is_missed_and_nothing_runs(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    daily = FakeCampaign("daily", Schedule(cron="0 9 * * *"), misfire_grace=timedelta(hours=2))
    engine, _ = engine_for(contexts, db_url, tmp_path, clock, [daily])
    assert len(engine.claim_due(engine.specs.values())) == 1
    clock.set(T0 + timedelta(days=3, hours=5))  # back three days later, 5 h after 09:00
    assert engine.claim_due(engine.specs.values()) == []
    rows = run_rows(db)[1:]
    assert [(r.scheduled_at, r.status) for r in rows] == [
        (T0 + timedelta(days=d), "missed") for d in (1, 2, 3)]
    assert all("missed by" in (r.detail or "") for r in rows)


def test_mixed_downtime_runs_latest_in_grace_and_misses_older(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    campaign = FakeCampaign("c", Schedule(interval=timedelta(hours=1)),
                            misfire_grace=timedelta(minutes=90))
    engine, _ = engine_for(contexts, db_url, tmp_path, clock, [campaign])
    engine.claim_due(engine.specs.values())
    clock.advance(timedelta(hours=4, minutes=10))
    claimed = engine.claim_due(engine.specs.values())
    assert [c.scheduled_at for c in claimed] == [T0 + timedelta(hours=4)]
    statuses = {r.scheduled_at: r.status for r in run_rows(db)}
    assert statuses == {T0: "pending", T0 + timedelta(hours=1): "missed",
                        T0 + timedelta(hours=2): "missed",
                        T0 + timedelta(hours=3): "coalesced",
                        T0 + timedelta(hours=4): "pending"}


def test_missed_policy_skip_drops_late_occurrences(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    campaign = FakeCampaign("c", Schedule(interval=timedelta(hours=1)),
                            misfire_grace=timedelta(hours=6), missed="skip")
    engine, _ = engine_for(contexts, db_url, tmp_path, clock, [campaign])
    engine.claim_due(engine.specs.values())
    clock.advance(timedelta(hours=3, minutes=20))
    assert engine.claim_due(engine.specs.values()) == []
    assert [r.status for r in run_rows(db)] == ["pending", "missed", "missed", "missed"]
    # An on-time wake-up still runs under "skip".
    clock.set(T0 + timedelta(hours=4, seconds=2))
    assert len(engine.claim_due(engine.specs.values())) == 1


def test_plan_claims_is_pure() -> None:
    from scheduler.kinds import ScheduleSpec

    spec = ScheduleSpec("k", "c", "recorder", EVERY_MIN, timedelta(minutes=2))
    claims, cursor = plan_claims(spec, T0, T0 + timedelta(minutes=5))
    assert [c.status for c in claims] == ["missed", "missed", "coalesced", "coalesced", "pending"]
    assert cursor == T0 + timedelta(minutes=5)
    assert plan_claims(spec, T0 + timedelta(minutes=5), T0 + timedelta(minutes=5)) == ([], None)


# -- cursors survive restarts and re-added jobs (APScheduler #696) ---------------------------

async def test_restart_catches_up_from_cursor_and_executes_once(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    campaign = FakeCampaign("weekly", Schedule(cron="0 9 * * *"),
                            misfire_grace=timedelta(hours=2))
    first, kind1 = engine_for(contexts, db_url, tmp_path, clock, [campaign])
    await first.start()
    await asyncio.wait_for(kind1.event.wait(), 10)
    await first.stop(timeout_s=5)
    assert [(r.scheduled_at, r.status) for r in run_rows(db)] == [(T0, "done")]

    # Down over the next day's 09:00; back at 10:00, within the 2 h grace.
    clock.set(T0 + timedelta(days=1, hours=1))
    second, kind2 = engine_for(contexts, db_url, tmp_path, clock, [campaign])
    await second.start()
    await asyncio.wait_for(kind2.event.wait(), 10)
    # Re-adding jobs (reload with replace_existing) must not drop or duplicate anything.
    second.reload()
    second.reload()
    await asyncio.sleep(0.2)
    await second.stop(timeout_s=5)
    assert [(r.scheduled_at, r.status) for r in run_rows(db)] == [
        (T0, "done"), (T0 + timedelta(days=1), "done")]
    assert len(kind2.executed) == 1
    assert cursor_of(db, "weekly") == T0 + timedelta(days=1)


def test_cursor_never_moves_backwards(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    engine, _ = engine_for(contexts, db_url, tmp_path, clock, [FakeCampaign("c", EVERY_MIN)])
    engine.claim_due(engine.specs.values())
    with engine.ctx.begin() as conn:
        run_store.advance_cursors(conn, {"c": ("c", T0 - timedelta(days=1))}, T0)
    assert cursor_of(db, "c") == T0


async def test_interrupted_run_resumes_on_start(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    campaign = FakeCampaign("c", Schedule(cron="0 9 * * *"))
    first, kind1 = engine_for(contexts, db_url, tmp_path, clock, [campaign])
    kind1.block = asyncio.Event()  # never set: the run is in flight at shutdown
    await first.start()
    await asyncio.wait_for(kind1.event.wait(), 10)
    await first.stop(timeout_s=0.2)
    assert [r.status for r in run_rows(db)] == ["running"]

    clock.advance(timedelta(minutes=5))
    second, kind2 = engine_for(contexts, db_url, tmp_path, clock, [campaign])
    await second.start()
    await asyncio.wait_for(kind2.event.wait(), 10)
    await asyncio.sleep(0.1)
    await second.stop(timeout_s=5)
    rows = run_rows(db)
    assert [r.status for r in rows] == ["done"]
    assert kind2.executed == [("c", rows[0].id)]


# -- pauses ----------------------------------------------------------------------------------

async def test_paused_campaign_run_is_held_then_released(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    engine, kind = engine_for(contexts, db_url, tmp_path, clock,
                              [FakeCampaign("c", Schedule(cron="0 9 * * *"))])
    with engine.ctx.begin() as conn:
        pauses.add(conn, "c", pauses.MANUAL, T0, detail="test")
    [claimed] = engine.claim_due(engine.specs.values())
    assert await engine.execute(claimed.run_id) is None
    assert [(r.status, r.detail) for r in run_rows(db)] == [("held", "held: paused (manual)")]
    assert kind.executed == []
    with engine.ctx.begin() as conn:
        pauses.remove(conn, "c", pauses.MANUAL, T0)
    assert engine.holds.release() == [claimed.run_id]
    result = await engine.execute(claimed.run_id)
    assert result is not None and result.status == "done"
    assert kind.executed == [("c", claimed.run_id)]


async def test_held_past_max_delay_is_skipped(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    engine, kind = engine_for(contexts, db_url, tmp_path, clock,
                              [FakeCampaign("c", Schedule(cron="0 9 * * *"))])
    with engine.ctx.begin() as conn:
        pauses.add(conn, "c", pauses.guard_reason("website"), T0)
    [claimed] = engine.claim_due(engine.specs.values())
    await engine.execute(claimed.run_id)
    clock.advance(timedelta(days=2))
    with engine.ctx.begin() as conn:
        pauses.remove(conn, "c", pauses.guard_reason("website"), clock.now())
    assert engine.holds.release() == []
    [row] = run_rows(db)
    assert row.status == "skipped" and "max delay" in row.detail
    assert kind.executed == []


async def test_run_now_uses_the_claim_path(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    engine, kind = engine_for(contexts, db_url, tmp_path, clock,
                              [FakeCampaign("c", Schedule(cron="0 9 * * *"))])
    run_id = await engine.run_now("c")
    assert run_id is not None
    assert await engine.run_now("c") is None  # same instant: already claimed
    [row] = run_rows(db)
    assert (row.trigger, row.status, row.schedule_key) == ("manual", "done", "c#manual")
    assert kind.executed == [("c", run_id)]


# -- DST ---------------------------------------------------------------------------------

def test_dst_fold_occurrence_is_one_run_row(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    hel = FakeCampaign("hel", Schedule(timezone="Europe/Helsinki", cron="30 3 * * *"),
                       misfire_grace=timedelta(hours=12))
    clock = FakeClock(datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    engine, _ = engine_for(contexts, db_url, tmp_path, clock, [hel])
    engine.claim_due(engine.specs.values())
    # Wake at every quarter hour through the fold night (both 03:30 local instants).
    while clock.now() < datetime(2026, 10, 25, 6, 0, tzinfo=UTC):
        clock.advance(timedelta(minutes=15))
        engine.claim_due(engine.specs.values())
    rows = run_rows(db)
    assert [(r.scheduled_at, r.local_slot) for r in rows] == [
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), "2026-10-25T03:30:00")]
    # A second instant for the same local slot (what CronTrigger would fire) is refused.
    with engine.ctx.begin() as conn:
        won = run_store.claim(conn, [Claim("hel", "hel", "recorder",
                                           datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
                                           "2026-10-25T03:30:00")], "node-b", clock.now())
    assert won == {}
    assert len(run_rows(db)) == 1


async def test_reload_after_apscheduler_dropped_a_finished_one_off(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    once = FakeCampaign("once", Schedule(at=T0))
    engine, kind = engine_for(contexts, db_url, tmp_path, clock, [once])
    await engine.start()
    await asyncio.wait_for(kind.event.wait(), 10)
    assert engine.waker.scheduler is not None
    # APScheduler removes a job whose trigger is exhausted; reload must cope with that.
    [job_id] = engine.waker.jobs
    engine.waker.scheduler.remove_job(job_id)
    engine.ctx.config.campaigns = {}
    engine.reload()
    assert engine.specs == {}
    await engine.stop(timeout_s=5)


async def test_a_finished_run_is_never_executed_again(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    engine, kind = engine_for(contexts, db_url, tmp_path, clock,
                              [FakeCampaign("c", Schedule(cron="0 9 * * *"))])
    [claimed] = engine.claim_due(engine.specs.values())
    assert (await engine.execute(claimed.run_id)) is not None
    assert (await engine.execute(claimed.run_id)) is None  # e.g. resumed after it finished
    assert kind.executed == [("c", claimed.run_id)]
    assert [r.status for r in run_rows(db)] == ["done"]


async def test_dead_nodes_run_is_adopted_by_one_survivor(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    campaign = FakeCampaign("c", Schedule(cron="0 9 * * *"))
    dead, _ = engine_for(contexts, db_url, tmp_path, clock, [campaign], node="dead")
    [claimed] = dead.claim_due(dead.specs.values())
    a, _ = engine_for(contexts, db_url, tmp_path, clock, [campaign], node="node-a")
    b, _ = engine_for(contexts, db_url, tmp_path, clock, [campaign], node="node-b")
    with dead.ctx.begin() as conn:  # "dead" last beat 5 minutes ago by the database's clock
        heartbeats.beat(conn, "dead", "service", dbclock.db_now(conn) - timedelta(minutes=5))
    a.heartbeat()
    b.heartbeat()
    adopted = a.recovery.interrupted_runs() + b.recovery.interrupted_runs()
    assert adopted == [claimed.run_id]
    assert run_rows(db)[0].node in ("node-a", "node-b")
    # The former owner, back again, leaves the adopted run alone.
    assert dead.recovery.interrupted_runs() == []


async def test_claimed_runs_start_in_one_batch_and_paused_ones_are_held(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    campaigns = [FakeCampaign(f"c{i}", Schedule(cron="0 9 * * *")) for i in range(5)]
    engine, kind = engine_for(contexts, db_url, tmp_path, clock, campaigns)
    with db.begin() as conn:
        pauses.add(conn, "c3", pauses.MANUAL, T0, detail="numbers late", by="test")
    claimed = engine.claim_due(engine.specs.values())
    assert {r.status for r in run_rows(db)} == {"pending"}  # the claim alone starts nothing
    started = engine.claims.start_unpaused(claimed)
    by_campaign = {c.spec.campaign: c for c in started}
    assert by_campaign["c3"].started is None  # paused: the executor holds it
    assert all(by_campaign[f"c{i}"].started is not None for i in (0, 1, 2, 4))
    rows = {r.campaign: r for r in run_rows(db)}
    assert {n: r.status for n, r in rows.items()} == {
        "c0": "running", "c1": "running", "c2": "running", "c3": "pending", "c4": "running"}
    assert rows["c0"].started_at is not None and rows["c3"].started_at is None
    seen: list[tuple[str, str]] = []
    engine.executor.on_started = lambda run, _at: seen.append((run.campaign, run.status))
    for claimed_run in started:
        await engine.executor.execute(claimed_run.run_id, started=claimed_run.started)
    assert sorted(name for name, _id in kind.executed) == ["c0", "c1", "c2", "c4"]
    assert sorted(seen) == [("c0", "running"), ("c1", "running"), ("c2", "running"),
                            ("c4", "running")]
    statuses = {r.campaign: r.status for r in run_rows(db)}
    assert statuses == {"c0": "done", "c1": "done", "c2": "done", "c3": "held", "c4": "done"}
    # A second node's start of the same runs moves nothing: they are not pending any more.
    assert all(c.started is None for c in engine.claims.start_unpaused(claimed))
