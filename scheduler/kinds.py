"""The contract a job kind implements, and the registry the service is composed from.

This is the plug of the mechanism layer, as APScheduler's ``triggers/base.py`` is for its
triggers: ``scheduler/`` drives any :class:`JobKind` it is given and never imports ``jobs/``.
The one composition root, ``martech/compose.py``, fills a :class:`Registry` with the kinds in
``jobs/`` (docs/ARCHITECTURE.md, "Adding a job kind").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import click
from aiohttp import web

from scheduler.config.campaigns import CampaignBase, CampaignTypes, ListFile
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
    """A kind of campaign: its config model, its schedules, and what one run does."""

    kind: str

    @property
    def campaign_model(self) -> type[CampaignBase]:
        """The pydantic model of this kind's campaign files (``kind: Literal[...]`` inside)."""
        ...

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        """Every schedule this campaign needs (a newsletter: one; reminders: one per lead)."""
        ...

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        """Do the work of one claimed run. Must be safe to call again after a crash."""
        ...

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings) -> list[Problem]:
        """Checks beyond the schema: templates compile, files readable, names exist, …"""
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


class HasLinks(Protocol):
    """The optional hook of a :class:`JobKind` whose campaigns contain links.

    ``campaign_links(campaign, config, settings)`` returns the distinct http(s) links the
    campaign will send people to, as its runs would (a newsletter: rendered for its audience,
    UTM-tagged); ``martech validate --links`` checks them. Looked up with getattr.
    """

    def campaign_links(self, campaign: Any, config: LoadedConfig, settings: Settings
                       ) -> list[str]: ...


ServiceComponent = Callable[[ServiceContext], Awaitable[None]]
CliRegistrar = Callable[[click.Group], None]
HttpRoutes = Callable[[web.Application, ServiceContext], None]
# Advice that is no error (the config runs as it is): ``martech validate`` prints it.
ConfigWarnings = Callable[[LoadedConfig, Settings], list[str]]


@dataclass
class Registry:
    """Job kinds by name, background components, HTTP routes and CLI commands they add."""

    kinds: dict[str, JobKind] = field(default_factory=dict)
    components: dict[str, ServiceComponent] = field(default_factory=dict)
    # Components a worker process also runs (scheduler/workers.py): safe to run many times
    # on one node, needing no engine, HTTP app or guard.
    worker_components: dict[str, ServiceComponent] = field(default_factory=dict)
    # The command that starts a worker process (the composition root's); empty: no workers.
    worker_argv: list[str] = field(default_factory=list)
    cli: list[CliRegistrar] = field(default_factory=list)
    http_routes: list[HttpRoutes] = field(default_factory=list)
    list_files: list[ListFile] = field(default_factory=list)
    warnings: list[ConfigWarnings] = field(default_factory=list)

    def add_kind(self, job: JobKind, list_file: ListFile | None = None) -> None:
        """Register ``job``; ``list_file`` also reads its campaigns from a file of their own."""
        model_kind = CampaignTypes.kind_of(job.campaign_model)
        if model_kind != job.kind:
            raise ValueError(f"kind {job.kind!r} registers a model of kind {model_kind!r}")
        self.kinds[job.kind] = job
        if list_file is not None:
            self.list_files.append(list_file)

    @property
    def campaign_types(self) -> CampaignTypes:
        """The campaign file's discriminated union, from the registered kinds' models."""
        return CampaignTypes.of([k.campaign_model for k in self.kinds.values()],
                                self.list_files)

    def specs(self, config: LoadedConfig) -> dict[str, ScheduleSpec]:
        out: dict[str, ScheduleSpec] = {}
        for campaign in config.campaigns.values():
            if not campaign.enabled or campaign.kind not in self.kinds:
                continue
            for spec in self.kinds[campaign.kind].schedules(campaign, config):
                out[spec.key] = spec
        return out

    def campaign_links(self, config: LoadedConfig, settings: Settings) -> dict[str, list[str]]:
        """Each enabled campaign's links, from the kinds that have the optional hook."""
        out: dict[str, list[str]] = {}
        for name, campaign in config.campaigns.items():
            hook = getattr(self.kinds.get(campaign.kind), "campaign_links", None)
            if hook is not None and campaign.enabled:
                out[name] = list(hook(campaign, config, settings))
        return out

    def validate(self, config: LoadedConfig, settings: Settings) -> list[Problem]:
        problems: list[Problem] = []
        for campaign in config.campaigns.values():
            job = self.kinds.get(campaign.kind)
            if job is not None:
                problems += job.validate(campaign, config, settings)
        return problems
