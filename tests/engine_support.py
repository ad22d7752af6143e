"""In-process fakes for the engine tier: a recording job kind and a context builder."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine as SaEngine

from scheduler.clock import FakeClock
from scheduler.config.campaigns import CampaignBase
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.errors import Problem
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.schedules import Schedule
from scheduler.settings import Settings
from scheduler.store.db import make_engine
from scheduler.store.runs import RunRow
from scheduler.store.tables import runs


@dataclass(frozen=True)
class FakeCampaign:
    name: str
    schedule: Schedule
    misfire_grace: timedelta = timedelta(hours=1)
    missed: str = "run_once"
    on_pause: str = "hold"
    kind: str = "recorder"
    enabled: bool = True
    requires: list[str] = field(default_factory=list)


class RecorderCampaign(CampaignBase):
    """The config model of the recording kind (its tests build FakeCampaigns directly)."""

    kind: Literal["recorder"]


class RecorderKind:
    """A job kind that records which runs it executed (and can be told to block)."""

    kind = "recorder"
    campaign_model: type[CampaignBase] = RecorderCampaign

    def __init__(self) -> None:
        self.executed: list[tuple[str, int]] = []
        self.event = asyncio.Event()
        self.block: asyncio.Event | None = None

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        return [ScheduleSpec(campaign.name, campaign.name, self.kind, campaign.schedule,
                             campaign.misfire_grace, campaign.missed, campaign.on_pause)]

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        self.executed.append((campaign.name, run.id))
        self.event.set()
        if self.block is not None:
            await self.block.wait()
        return RunResult("done", stats={"n": 1})

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings
                 ) -> list[Problem]:
        return []


def make_registry(kind: RecorderKind) -> Registry:
    registry = Registry()
    registry.add_kind(kind)
    return registry


def make_ctx(db_url: str, tmp_path: Path, clock: FakeClock, campaigns: list[FakeCampaign],
             node: str = "node-a") -> ServiceContext:
    settings = Settings(database_url=db_url, config_dir=tmp_path / "config",
                        var_dir=tmp_path / "var", node_name=node,
                        _env_file=None)  # type: ignore[call-arg]
    config = LoadedConfig(config_dir=tmp_path / "config",
                          campaigns={c.name: c for c in campaigns})
    return ServiceContext(settings, config, make_engine(db_url), clock)


def run_rows(db: SaEngine) -> list[sa.Row[Any]]:
    with db.connect() as conn:
        return list(conn.execute(sa.select(runs).order_by(runs.c.scheduled_at, runs.c.id)))
