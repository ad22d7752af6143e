"""Service.reload: a broken file keeps the old config; a valid change keeps cursors."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from rich.console import Console

from jobs.report.config import REPORTS_FILE, ReportCampaign
from scheduler.clock import FakeClock
from scheduler.config.loader import LoadedConfig
from scheduler.kinds import Registry, ScheduleSpec
from scheduler.service import Service
from scheduler.settings import Settings
from scheduler.store.tables import schedule_cursors
from tests.engine_support import RecorderKind, run_rows

T0 = datetime(2026, 11, 23, 9, 0, 30, tzinfo=UTC)

REPORTS = """\
reports:
  - name: hourly
    schedule: {every: 1h}
  - name: daily
    schedule: {cron: "0 6 * * *", timezone: Europe/Berlin}
"""


class ConfigRecorder(RecorderKind):
    """The recording kind, scheduled from real ``report`` config entries."""

    kind = "report"
    campaign_model = ReportCampaign

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        return [ScheduleSpec(campaign.name, campaign.name, self.kind,
                             campaign.schedule.to_schedule(), campaign.schedule.misfire_grace,
                             campaign.schedule.missed)]


@pytest.fixture
async def service(tmp_path: Path, db_url: str) -> AsyncIterator[Service]:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "reports.yaml").write_text(REPORTS)
    settings = Settings(config_dir=config_dir, database_url=db_url, var_dir=tmp_path / "var",
                        node_name="node-a", reload_poll_s=0.05,
                        _env_file=None)  # type: ignore[call-arg]
    registry = Registry()
    registry.add_kind(ConfigRecorder(), REPORTS_FILE)
    svc = Service(settings, registry, clock=FakeClock(T0),
                  console=Console(file=io.StringIO(), width=200))
    from scheduler.service import load_and_validate

    task = asyncio.create_task(svc.run(load_and_validate(settings, registry)))
    for _ in range(500):
        if svc.engine is not None and svc.engine.loops:
            break
        await asyncio.sleep(0.01)
    assert svc.engine is not None and svc.engine.loops
    yield svc
    svc.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


def cursors(svc: Service) -> dict[str, datetime]:
    assert svc.ctx is not None
    with svc.ctx.db.connect() as conn:
        return {r.schedule_key: r.last_at for r in conn.execute(sa.select(schedule_cursors))}


async def settled(svc: Service, keys: set[str]) -> None:
    """Wait until the claim loop has written a cursor for every key."""
    for _ in range(500):
        if keys <= set(cursors(svc)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"cursors never appeared for {keys}")


async def test_broken_file_keeps_old_config_and_says_why(
        service: Service, caplog: pytest.LogCaptureFixture) -> None:
    assert service.ctx is not None and service.engine is not None
    old_config, old_specs = service.ctx.config, dict(service.engine.specs)
    reports = service.settings.config_dir / "reports.yaml"
    reports.write_text(REPORTS.replace("every: 1h", "every: 1hour"))
    with caplog.at_level(logging.ERROR, logger="martech.service"):
        assert service.reload("test") is False
    assert service.ctx.config is old_config
    assert service.engine.specs == old_specs
    [record] = [r for r in caplog.records if r.getMessage().startswith("config reload rejected")]
    # The same file:line: field: message that `martech validate` prints.
    assert f"{reports}:3: reports.0.schedule.every:" in record.getMessage()
    assert "not a duration" in record.getMessage()
    assert "previous config keeps running" in record.getMessage()


async def test_valid_change_swaps_schedules_without_losing_cursors(service: Service) -> None:
    assert service.ctx is not None and service.engine is not None
    await settled(service, {"hourly", "daily"})
    before = cursors(service)
    reports = service.settings.config_dir / "reports.yaml"
    reports.write_text(REPORTS.replace("name: daily", "name: nightly")
                       .replace('"0 6 * * *"', '"0 2 * * *"')
                       .replace("every: 1h", "every: 1h, misfire_grace: 3h"))
    assert service.reload("test") is True
    assert set(service.engine.specs) == {"hourly", "nightly"}
    assert service.engine.specs["hourly"].misfire_grace == timedelta(hours=3)
    await settled(service, {"nightly"})
    after = cursors(service)
    assert after["hourly"] == before["hourly"]  # untouched by the reload
    # The cursor still drives catch-up: two hours of downtime -> one run, one coalesced.
    assert isinstance(service.clock, FakeClock)
    service.clock.advance(timedelta(hours=2))
    engine = service.engine
    claimed = await service.ctx.in_thread(engine.claim_due, [engine.specs["hourly"]])
    assert [c.scheduled_at for c in claimed] == [datetime(2026, 11, 23, 11, tzinfo=UTC)]
    statuses = [r.status for r in run_rows(service.ctx.db) if r.campaign == "hourly"]
    assert statuses == ["coalesced", "pending"]


async def test_file_change_is_noticed_and_reloaded(service: Service) -> None:
    assert service.engine is not None
    reports = service.settings.config_dir / "reports.yaml"
    reports.write_text(REPORTS + "  - name: extra\n    schedule: {every: 5m}\n")
    os.utime(reports, (1e9 + 10, 1e9 + 10))  # an mtime surely different from before
    for _ in range(300):
        if "extra" in service.engine.specs:
            break
        await asyncio.sleep(0.02)
    assert set(service.engine.specs) == {"hourly", "daily", "extra"}


async def test_sighup_reloads(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    assert service.engine is not None
    reports = service.settings.config_dir / "reports.yaml"
    with caplog.at_level(logging.INFO, logger="martech.service"):
        service.settings.reload_poll_s = 60.0  # only the signal can trigger it now
        await asyncio.sleep(0.1)
        reports.write_text(REPORTS.replace("name: daily", "name: by-signal"))
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(300):
            if "by-signal" in service.engine.specs:
                break
            await asyncio.sleep(0.02)
    assert "by-signal" in service.engine.specs
    assert any("config reloaded (SIGHUP)" in r.getMessage() for r in caplog.records)
