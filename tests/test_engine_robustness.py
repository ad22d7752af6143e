"""The engine survives its dependencies: outages, bookkeeping errors, races, bad schedules.

Regression tests for the reviewer's findings (database blips abandoning runs, runs stuck after
a bookkeeping error, interrupted runs resumed days late, two nodes releasing one held run,
a cron that never fires crashing start-up and reloads).
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.engine import Engine as SaEngine

from jobs.report.config import REPORTS_FILE, ReportCampaign
from scheduler.clock import FakeClock
from scheduler.config.base import ScheduleConfig
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.engine import Engine
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.schedules import Schedule
from scheduler.service import Service, load_and_validate
from scheduler.settings import Settings
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.runs import Claim, RunRow
from tests.engine_support import FakeCampaign, RecorderKind, make_ctx, make_registry, run_rows

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # a Monday
DAILY = Schedule(cron="0 9 * * *")
NEVER = Schedule(cron="0 9 30 2 *", timezone="Europe/Berlin")  # 30 February


class AbandonRecorder(RecorderKind):
    """Records executions and the optional ``on_abandoned`` hook's calls."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned: list[tuple[int, str, str]] = []

    async def on_abandoned(self, ctx: ServiceContext, campaign: Any, run: RunRow,
                           reason: str) -> None:
        self.abandoned.append((run.id, run.status, reason))


class FlakyKind(RecorderKind):
    """Raises the given exceptions on successive calls, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        super().__init__()
        self.errors = list(errors)
        self.seen_status: list[str] = []

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        with ctx.begin() as conn:
            current = run_store.get(conn, run.id)
        assert current is not None
        self.seen_status.append(current.status)
        self.executed.append((campaign.name, run.id))
        self.event.set()
        if self.errors:
            raise self.errors.pop(0)
        return RunResult("done")


@pytest.fixture
def contexts() -> Iterator[list[ServiceContext]]:
    made: list[ServiceContext] = []
    yield made
    for ctx in made:
        ctx.db.dispose()


def engine_for(contexts: list[ServiceContext], db_url: str, tmp_path: Path, clock: FakeClock,
               campaigns: list[FakeCampaign], kind: RecorderKind,
               node: str = "node-a") -> Engine:
    ctx = make_ctx(db_url, tmp_path, clock, campaigns, node=node)
    contexts.append(ctx)
    engine = Engine(ctx, make_registry(kind))
    engine.specs = engine.registry.specs(ctx.config)
    engine.executor.retry_first_s = 0.01  # real backoff waits stay tiny in tests
    return engine


def outage() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("UPDATE deliveries", {}, Exception("database is locked"))


def insert_run(engine: Engine, at: datetime, *, status: str = "pending", node: str = "node-a",
               trigger: str = "schedule", key: str = "c") -> int:
    with engine.ctx.begin() as conn:
        won = run_store.claim(conn, [Claim(key, "c", "recorder", at, f"slot:{at.isoformat()}",
                                           trigger=trigger)], node, at)
        [run_id] = won.values()
        if status != "pending":
            run_store.set_status(conn, run_id, status, at)
    return run_id


# -- 1. a dependency outage during a run does not abandon it -----------------------------------

@pytest.mark.parametrize("error", [outage(), ConnectionRefusedError("smtp relay")],
                         ids=["dbapi", "oserror"])
async def test_outage_in_job_keeps_run_running_and_retries(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        error: BaseException) -> None:
    kind = FlakyKind(error, error)
    engine = engine_for(contexts, db_url, tmp_path, FakeClock(T0), [FakeCampaign("c", DAILY)],
                        kind)
    [claimed] = engine.claim_due(engine.specs.values())
    result = await engine.execute(claimed.run_id)
    assert result is not None and result.status == "done"
    # Re-executed twice more, and each time the run was still "running", never "failed".
    assert kind.seen_status == ["running", "running", "running"]
    assert [(r.status, r.detail) for r in run_rows(db)] == [("done", None)]


@pytest.mark.parametrize("error", [ValueError("template variable missing"),
                                   FileNotFoundError("templates/email/gone.html")],
                         ids=["valueerror", "missing-file"])
async def test_job_bug_still_fails_the_run(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        error: BaseException) -> None:
    kind = FlakyKind(error)
    engine = engine_for(contexts, db_url, tmp_path, FakeClock(T0), [FakeCampaign("c", DAILY)],
                        kind)
    [claimed] = engine.claim_due(engine.specs.values())
    result = await engine.execute(claimed.run_id)
    assert result is not None and result.status == "failed"
    assert len(kind.executed) == 1
    [row] = run_rows(db)
    assert (row.status, row.detail) == ("failed", f"{type(error).__name__}: {error}")


async def test_outage_retry_stops_when_service_stops(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    kind = FlakyKind(*[outage()] * 100)
    engine = engine_for(contexts, db_url, tmp_path, FakeClock(T0), [FakeCampaign("c", DAILY)],
                        kind)
    engine.executor.retry_first_s = 30.0  # the stop must cut the backoff short
    [claimed] = engine.claim_due(engine.specs.values())
    task = asyncio.create_task(engine.execute(claimed.run_id))
    await asyncio.wait_for(kind.event.wait(), 5)
    engine.ctx.stopping.set()
    assert await asyncio.wait_for(task, 5) is None
    assert len(kind.executed) == 1
    assert [r.status for r in run_rows(db)] == ["running"]  # resumed on the next start


async def test_database_blip_mid_newsletter_resumes_the_send(
        db: SaEngine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's case: one failed ledger write used to fail the run, stranding rows."""
    from jobs.newsletter import ledger
    from jobs.newsletter.kind import NewsletterJob
    from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
    from tests.smtp_server import SmtpServer

    recipients = [f"u{i}@example.com" for i in range(30)]
    write_config(tmp_path, rows=recipients)
    real, calls = ledger.settle, {"n": 0}  # the group commit of sent rows and marks

    def flaky(conn: sa.Connection, token: int, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise outage()
        return real(conn, token, **kw)

    monkeypatch.setattr(ledger, "settle", flaky)
    with SmtpServer() as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        try:
            run_id = claim_run(ctx, T0)
            registry = Registry()
            registry.add_kind(NewsletterJob())
            engine = Engine(ctx, registry)
            engine.executor.retry_first_s = 0.01
            result = await engine.execute(run_id)
            with ctx.begin() as conn:
                counts = ledger.counts(conn, run_id)
                row = run_store.get(conn, run_id)
        finally:
            ctx.db.dispose()
        got = [rcpt for message in server.received for rcpt in message.rcpt_tos]
    assert calls["n"] > 2  # the send went on after the blip
    assert result is not None and result.status == "done"
    assert row is not None and row.status == "done"
    assert not {"pending", "sending"} & set(counts)  # no recipient stranded
    assert len(got) == len(set(got)) and set(got) <= set(recipients)  # none sent twice


# -- 2. a bookkeeping error never leaves a run stuck until restart -----------------------------

async def test_bookkeeping_error_before_start_is_retried(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    kind = RecorderKind()
    engine = engine_for(contexts, db_url, tmp_path, FakeClock(T0),
                        [FakeCampaign("weekly", Schedule(cron="0 9 * * MON"))], kind)

    def start_fails(*_args: Any) -> list[RunRow]:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("database is locked"))

    # The claim loop's batched start fails: each run's executor starts it instead, and its
    # own first bookkeeping step fails too.
    monkeypatch.setattr(run_store, "start", start_fails)
    real = engine.executor.hold_if_paused
    calls = {"n": 0}

    def flaky(run: RunRow, spec: ScheduleSpec | None) -> RunRow | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sa.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        return real(run, spec)

    engine.executor.hold_if_paused = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="martech.engine"):
        await engine.start()
        await asyncio.wait_for(kind.event.wait(), 5)
        await asyncio.sleep(0.05)
        await engine.stop(timeout_s=5)
    assert [r.status for r in run_rows(db)] == ["done"]
    assert len(kind.executed) == 1
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "run_retry"]
    assert record.job == "weekly" and record.run_id == kind.executed[0][1]  # type: ignore[attr-defined]


async def test_error_recording_the_outcome_is_retried_without_rerunning_the_job(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    kind = RecorderKind()
    engine = engine_for(contexts, db_url, tmp_path, FakeClock(T0), [FakeCampaign("c", DAILY)],
                        kind)
    real = engine.executor.finish_all
    calls = {"n": 0}

    def flaky(outcomes: Sequence[tuple[RunRow, RunResult]]) -> list[bool]:
        calls["n"] += 1
        if calls["n"] <= 2:  # the group write, then the one-by-one write of its outcome
            raise outage()
        return real(outcomes)

    engine.executor.finish_all = flaky  # type: ignore[method-assign]
    [claimed] = engine.claim_due(engine.specs.values())
    result = await engine.execute(claimed.run_id)
    assert result is not None and result.status == "done"
    assert len(kind.executed) == 1
    assert [r.status for r in run_rows(db)] == ["done"]
    assert calls["n"] == 3


# -- 3. interrupted runs resume only within grace / max delay ----------------------------------

async def test_interrupted_pending_run_past_grace_is_missed_not_run_days_late(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    kind = AbandonRecorder()
    engine = engine_for(contexts, db_url, tmp_path, clock,
                        [FakeCampaign("c", Schedule(cron="0 9 * * MON"),
                                      misfire_grace=timedelta(hours=2))], kind)
    run_id = insert_run(engine, T0)  # claimed at 09:00, the process died before running it
    clock.set(T0 + timedelta(days=3))
    await engine.start()
    await asyncio.sleep(0.05)
    await engine.stop(timeout_s=5)
    assert kind.executed == []
    [row] = run_rows(db)
    assert row.status == "missed" and "grace" in row.detail
    assert [(i, s) for i, s, _ in kind.abandoned] == [(run_id, "missed")]
    assert "grace" in kind.abandoned[0][2]


async def test_interrupted_running_run_past_max_delay_is_skipped(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    kind = AbandonRecorder()
    engine = engine_for(contexts, db_url, tmp_path, clock, [FakeCampaign("c", DAILY)], kind)
    run_id = insert_run(engine, T0, status="running")
    clock.set(T0 + timedelta(days=2))  # max_delay defaults to 1 day
    assert engine.recovery.interrupted_runs() == []
    await engine.recovery.drain_abandoned()
    [row] = run_rows(db)
    assert row.status == "skipped" and "max delay" in row.detail
    assert [(i, s) for i, s, _ in kind.abandoned] == [(run_id, "skipped")]


def test_interrupted_runs_within_limits_and_manual_runs_resume(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    kind = AbandonRecorder()
    engine = engine_for(contexts, db_url, tmp_path, clock, [FakeCampaign("c", DAILY)], kind)
    in_grace = insert_run(engine, T0 + timedelta(hours=3))
    running = insert_run(engine, T0, status="running")
    manual = insert_run(engine, T0 - timedelta(hours=5), trigger="manual", key="c#manual")
    clock.set(T0 + timedelta(hours=3, minutes=30))  # the grace is 1 h, max delay 1 day
    assert sorted(engine.recovery.interrupted_runs()) == sorted([in_grace, running, manual])
    assert {r.status for r in run_rows(db)} == {"pending", "running"}


async def test_held_run_skipped_past_max_delay_calls_the_hook(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    kind = AbandonRecorder()
    engine = engine_for(contexts, db_url, tmp_path, clock, [FakeCampaign("c", DAILY)], kind)
    with engine.ctx.begin() as conn:
        pauses.add(conn, "c", pauses.MANUAL, T0, detail="test")
    [claimed] = engine.claim_due(engine.specs.values())
    assert await engine.execute(claimed.run_id) is None  # held
    clock.advance(timedelta(days=2))
    with engine.ctx.begin() as conn:
        pauses.remove(conn, "c", pauses.MANUAL, clock.now())
    assert engine.holds.release() == []
    await engine.recovery.drain_abandoned()
    assert [(i, s) for i, s, _ in kind.abandoned] == [(claimed.run_id, "skipped")]
    assert "max delay" in kind.abandoned[0][2]


# -- 4. two nodes never both run one run -------------------------------------------------------

async def test_held_release_race_two_nodes(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        monkeypatch: pytest.MonkeyPatch) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite's BEGIN IMMEDIATE serialises the two releases (no race to lose)")
    clock = FakeClock(T0)
    campaigns = [FakeCampaign("c", Schedule(interval=timedelta(days=7)))]
    ka, kb = RecorderKind(), RecorderKind()
    a = engine_for(contexts, db_url, tmp_path, clock, campaigns, ka, node="node-a")
    b = engine_for(contexts, db_url, tmp_path, clock, campaigns, kb, node="node-b")
    with a.ctx.begin() as conn:
        won = run_store.claim(conn, [Claim("c", "c", "recorder", T0, "s", status="held")],
                              "node-a", T0)
    [run_id] = won.values()
    barrier = threading.Barrier(2)
    real = run_store.by_status

    def slow_by_status(conn: sa.Connection, statuses: Any, campaign: str | None = None
                       ) -> list[RunRow]:
        rows = real(conn, statuses, campaign)
        barrier.wait(timeout=10)  # both nodes have read "held" before either updates
        return rows

    monkeypatch.setattr(run_store, "by_status", slow_by_status)
    with ThreadPoolExecutor(2) as pool:
        fa, fb = pool.submit(a.holds.release), pool.submit(b.holds.release)
        got = [fa.result(), fb.result()]
    monkeypatch.setattr(run_store, "by_status", real)
    assert sorted(got) == [[], [run_id]]
    await asyncio.gather(*(e.execute(r) for e, ids in zip((a, b), got, strict=True)
                           for r in ids))
    assert len(ka.executed) + len(kb.executed) == 1
    assert [r.status for r in run_rows(db)] == ["done"]


async def test_node_never_executes_a_run_another_node_owns(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext]) -> None:
    clock = FakeClock(T0)
    campaigns = [FakeCampaign("c", DAILY)]
    ka, kb = RecorderKind(), RecorderKind()
    a = engine_for(contexts, db_url, tmp_path, clock, campaigns, ka, node="node-a")
    b = engine_for(contexts, db_url, tmp_path, clock, campaigns, kb, node="node-b")
    [claimed] = a.claim_due(a.specs.values())
    assert await b.execute(claimed.run_id) is None  # e.g. a stale spawn on node b
    assert kb.executed == []
    assert [(r.status, r.node) for r in run_rows(db)] == [("pending", "node-a")]
    result = await a.execute(claimed.run_id)
    assert result is not None and result.status == "done"


# -- 5. a cron that never fires ----------------------------------------------------------------

def test_cron_that_never_fires_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="never fires"):
        ScheduleConfig(cron="0 9 30 2 *", timezone="Europe/Berlin")
    ScheduleConfig(cron="0 9 29 2 *")  # leap days do fire


async def test_cron_that_never_fires_does_not_stop_the_others(
        db: SaEngine, db_url: str, tmp_path: Path, contexts: list[ServiceContext],
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(T0)
    kind = RecorderKind()
    good = FakeCampaign("good", Schedule(interval=timedelta(minutes=1)))
    engine = engine_for(contexts, db_url, tmp_path, clock, [good, FakeCampaign("bad", NEVER)],
                        kind)
    with caplog.at_level(logging.ERROR, logger="martech.engine"):
        claimed = engine.claim_due(engine.specs.values())
        assert [c.spec.key for c in claimed] == ["good"]
        await engine.start()
        assert engine.next_fire_times()["bad"] is None
        await engine.stop(timeout_s=5)
    assert {getattr(r, "job", None) for r in caplog.records} >= {"bad"}


# -- Service.reload keeps the old config on any error ------------------------------------------

class ExplodingReports(RecorderKind):
    """Schedules ``report`` entries; a report named ``boom`` breaks ``schedules()``."""

    kind = "report"
    campaign_model = ReportCampaign

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        if campaign.name == "boom":
            raise RuntimeError("kind bug")
        return [ScheduleSpec(campaign.name, campaign.name, self.kind,
                             campaign.schedule.to_schedule(), campaign.schedule.misfire_grace)]


async def test_reload_survives_an_unexpected_error(
        tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    reports = config_dir / "reports.yaml"
    reports.write_text("reports:\n  - name: hourly\n    schedule: {every: 1h}\n")
    settings = Settings(config_dir=config_dir, database_url=sqlite_url, var_dir=tmp_path / "var",
                        node_name="node-a", _env_file=None)  # type: ignore[call-arg]
    registry = Registry()
    registry.add_kind(ExplodingReports(), REPORTS_FILE)
    svc = Service(settings, registry, clock=FakeClock(T0), console=Console(file=io.StringIO()))
    ctx = make_ctx(sqlite_url, tmp_path, FakeClock(T0), [])
    ctx.settings, ctx.config = settings, load_and_validate(settings, registry)
    from scheduler.store.db import upgrade

    upgrade(ctx.db)
    svc.ctx, svc.engine = ctx, Engine(ctx, registry)
    await svc.engine.start()
    try:
        old_config, old_specs = ctx.config, dict(svc.engine.specs)
        reports.write_text(reports.read_text() + "  - name: boom\n    schedule: {every: 5m}\n")
        with caplog.at_level(logging.ERROR, logger="martech.service"):
            assert svc.reload("test") is False
        assert ctx.config is old_config and svc.engine.specs == old_specs
        [record] = [r for r in caplog.records if "reload failed" in r.getMessage()]
        assert record.exc_info is not None and "kind bug" in str(record.exc_info[1])
    finally:
        await svc.engine.stop(timeout_s=5)
        ctx.db.dispose()
