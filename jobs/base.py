"""The contract every job kind fulfils, and the registry the service composes them from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import click

from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.errors import Problem
from scheduler.schedules import Schedule
from scheduler.settings import Settings
from scheduler.store.runs import RunRow


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule the engine keeps: its key is unique across the whole config."""

    key: str
    campaign: str
    kind: str
    schedule: Schedule
    misfire_grace: timedelta
    missed: str = "run_once"  # run_once | skip
    on_pause: str = "hold"  # hold | skip
    max_delay: timedelta = timedelta(days=1)


@dataclass
class RunResult:
    """What a run did. ``status``: done | failed | interrupted (resume later) | held."""

    status: str = "done"
    detail: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class JobKind(Protocol):
    kind: str

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        """Every schedule this campaign needs (a newsletter: one; reminders: one per lead)."""
        ...

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        """Do the work of one claimed run. Must be safe to call again after a crash."""
        ...

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings) -> list[Problem]:
        """Checks beyond the schema: templates compile, files readable, …"""
        ...

    # Optional (not declared here, so kinds without it still satisfy the protocol):
    #     async def on_abandoned(self, ctx, campaign, run, reason: str) -> None
    # See AbandonsRuns: the engine looks it up with getattr and awaits it when present.


class AbandonsRuns(Protocol):
    """The optional hook of a :class:`JobKind`, called when the engine gives a run up.

    After an interruption (a run never started within its grace → ``missed``; a started run
    past its max delay → ``skipped``) or a hold past max delay (``skipped``), the engine
    awaits ``job.on_abandoned(ctx, campaign, run, reason)`` if the kind has it, so the kind
    can close its own books (a newsletter marks its pending deliveries skipped). ``run``
    carries the new status; ``reason`` is the run's detail. Must be idempotent.
    """

    async def on_abandoned(self, ctx: ServiceContext, campaign: Any, run: RunRow,
                           reason: str) -> None: ...


ServiceComponent = Callable[[ServiceContext], Awaitable[None]]
CliRegistrar = Callable[[click.Group], None]


@dataclass
class Registry:
    """Job kinds by name, background components (guard, outbox), and extra CLI commands."""

    kinds: dict[str, JobKind] = field(default_factory=dict)
    components: dict[str, ServiceComponent] = field(default_factory=dict)
    cli: list[CliRegistrar] = field(default_factory=list)

    def add_kind(self, job: JobKind) -> None:
        self.kinds[job.kind] = job

    def specs(self, config: LoadedConfig) -> dict[str, ScheduleSpec]:
        out: dict[str, ScheduleSpec] = {}
        for campaign in config.campaigns.values():
            if not campaign.enabled or campaign.kind not in self.kinds:
                continue
            for spec in self.kinds[campaign.kind].schedules(campaign, config):
                out[spec.key] = spec
        return out

    def validate(self, config: LoadedConfig, settings: Settings) -> list[Problem]:
        problems: list[Problem] = []
        for campaign in config.campaigns.values():
            job = self.kinds.get(campaign.kind)
            if job is not None:
                problems += job.validate(campaign, config, settings)
        return problems
