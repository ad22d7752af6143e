"""The ``martech`` command. Every option shows the environment variable behind it."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import exc as sa_exc

from scheduler.clock import SystemClock
from scheduler.config.loader import LoadedConfig
from scheduler.config.schema import write_schemas
from scheduler.context import ServiceContext
from scheduler.delivery import budget as render_budget
from scheduler.delivery.linkcheck import LinkCache, LinkChecker
from scheduler.engine import Engine, next_fire_times
from scheduler.errors import ConfigError, MartechError, Problem, UnknownCampaign
from scheduler.keys import check_keys
from scheduler.kinds import Registry
from scheduler.logs import setup_logging
from scheduler.service import Service, load_and_validate
from scheduler.settings import Settings, mask_url
from scheduler.status import (
    campaign_rows,
    campaigns_table,
    check_rows,
    checks_table,
    node_rows,
    nodes_table,
    zone_progress,
    zones_table,
)
from scheduler.store import heartbeats, pauses
from scheduler.store import runs as run_store
from scheduler.store.db import current_revision, make_engine, upgrade
from scheduler.workers import read_payload, run_worker

F = TypeVar("F", bound=Callable[..., Any])

# Piped output (logs, CI, `| less`) gets room for the tables instead of an 80-column squeeze.
console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)


class State:
    """Lazily built settings, and the registry, shared by subcommands."""

    def __init__(self, overrides: dict[str, Any], registry: Registry) -> None:
        self._overrides = {k: v for k, v in overrides.items() if v is not None}
        self._settings: Settings | None = None
        self.registry = registry

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = Settings(**self._overrides)
            except ValidationError as exc:
                lines = [f"settings: MARTECH_{'_'.join(str(p) for p in e['loc']).upper()}: "
                         f"{e['msg']}" for e in exc.errors()]
                raise click.ClickException("\n".join(lines)) from None
            setup_logging(self._settings)
            render_budget.configure(self._settings.render_budget_ms)
        return self._settings

    def config(self) -> LoadedConfig:
        return load_and_validate(self.settings, self.registry)

    def db(self, *, migrate: bool = True) -> Any:
        """The database; ``migrate=False`` for read-only probes (``health``) that must not
        change the schema under a running service."""
        engine = make_engine(self.settings.database_url)
        if migrate:
            upgrade(engine)
        return engine


def friendly_errors(fn: F) -> F:
    """Bad input exits non-zero with a clear message, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            for problem in exc.problems:
                err_console.print(str(problem), markup=False, highlight=False)
            err_console.print(f"{len(exc.problems)} problem(s) found", markup=False)
            sys.exit(1)
        except MartechError as exc:
            _fail(f"error: {exc}")
        except sa_exc.DBAPIError as exc:
            detail = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
            _fail(f"error: the database refused or could not be reached ({_database()}): "
                  f"{detail[0] if detail else type(exc).__name__}")
        except (sa_exc.NoSuchModuleError, sa_exc.ArgumentError, ModuleNotFoundError) as exc:
            _fail(f"error: cannot use the database URL {_database()}: {exc}; martech supports "
                  "sqlite:///PATH and postgresql+psycopg://USER@HOST/DB")
        except OSError as exc:
            # A read-only or missing var/ directory, a full disk: say which file, no traceback.
            where = f" {exc.filename}" if exc.filename else ""
            _fail(f"error: cannot access{where}: {exc.strerror or exc}")

    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> NoReturn:
    err_console.print(message, markup=False, highlight=False)
    sys.exit(1)


def _database() -> str:
    """The configured database URL, password masked, for error messages."""
    ctx = click.get_current_context(silent=True)
    state = ctx.find_object(State) if ctx is not None else None
    settings = state._settings if state is not None else None
    return mask_url(settings.database_url) if settings is not None else "MARTECH_DATABASE_URL"


def make_cli(registry: Registry) -> click.Group:
    """The ``martech`` command: the mechanism's commands plus those the job kinds add."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"],
                                   "auto_envvar_prefix": "MARTECH"})
    @click.option("--config-dir", type=click.Path(path_type=Path), envvar="MARTECH_CONFIG_DIR",
                  show_envvar=True, help="Directory of campaign and check YAML files.")
    @click.option("--database-url", envvar="MARTECH_DATABASE_URL", show_envvar=True,
                  help="SQLAlchemy URL (default: sqlite:///var/martech.db).")
    @click.version_option(package_name="martech")
    @click.pass_context
    def main(ctx: click.Context, config_dir: Path | None, database_url: str | None) -> None:
        """martech: marketing automation with IT health guards."""
        ctx.obj = State({"config_dir": config_dir, "database_url": database_url}, registry)

    for command in (run, worker, validate, schema, settings_cmd, status, run_job, pause, resume,
                    health, db):
        main.add_command(command)
    for registrar in registry.cli:
        registrar(main)
    return main


@click.command()
@click.pass_obj
@friendly_errors
def run(state: State) -> None:
    """Run the service until SIGINT/SIGTERM; SIGHUP or a file change reloads config."""
    check_keys(state.settings)  # a guessable key behind a public URL: refuse before anything
    config = state.config()
    service = Service(state.settings, state.registry, console=console)
    sys.exit(asyncio.run(service.run(config)))


@click.command(hidden=True)
@click.pass_obj
@friendly_errors
def worker(state: State) -> None:
    """Internal: a worker process of `martech run`; its settings arrive on stdin."""
    settings, parent_pid = read_payload(sys.stdin.buffer.read())
    state._settings = settings
    setup_logging(settings)
    render_budget.configure(settings.render_budget_ms)
    sys.exit(asyncio.run(run_worker(settings, state.registry, state.config(), parent_pid)))


@click.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("--links", "with_links", is_flag=True,
              help="Also check every link the campaigns contain (fetches each once).")
@click.pass_obj
@friendly_errors
def validate(state: State, directory: Path | None, with_links: bool) -> None:
    """Check every config file, template and audience; print each problem as file:line."""
    if directory is not None:
        state._overrides["config_dir"] = directory
    config = state.config()
    for warn in state.registry.warnings:
        for text in warn(config, state.settings):
            click.echo(f"warning: {text}", err=True)
    checks = len(config.checks.checks)
    if with_links:
        checked, problems = asyncio.run(link_problems(state, config))
        if problems:
            raise ConfigError(problems)
        click.echo(f"links: {checked} distinct link(s) checked — none broken")
    # click.echo, not rich: the summary must stay one line however narrow the terminal.
    click.echo(f"ok: {len(config.campaigns)} campaign(s), {checks} check(s) in "
               f"{state.settings.config_dir} — no problems")


async def link_problems(state: State, config: LoadedConfig) -> tuple[int, list[Problem]]:
    """Every campaign's links checked (each distinct URL once); a problem per broken one."""
    by_campaign = state.registry.campaign_links(config, state.settings)
    checker = LinkChecker(LinkCache(SystemClock()), timeout_s=state.settings.http_timeout_s)
    results = await checker.check(u for urls in by_campaign.values() for u in urls)
    problems = [config.campaign_problem(name, (), f"broken link {url} ({results[url].detail})")
                for name, urls in by_campaign.items() for url in urls if not results[url].ok]
    return len(results), problems


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("schemas"),
              show_default=True, help="Directory to write the JSON Schemas into.")
@click.pass_obj
def schema(state: State, out: Path) -> None:
    """Write JSON Schemas for campaign, checks and reports files (editor autocompletion)."""
    for path in write_schemas(out, state.registry.campaign_types):
        click.echo(f"wrote {path}")


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def settings_cmd(state: State, as_json: bool) -> None:
    """Print the effective settings; secrets are masked."""
    values = state.settings.masked()
    if as_json:
        click.echo(json.dumps(values, indent=2, default=str))
        return


    table = Table("setting", "environment variable", "value", title="Effective settings",
                  title_justify="left")
    for name, value in values.items():
        table.add_row(name, f"MARTECH_{name.upper()}", str(value))
    console.print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@friendly_errors
def status(state: State, as_json: bool) -> None:
    """Campaigns (next and last run, pause reasons), checks (state, last result) and nodes
    (last heartbeat by the database's clock, alive or dead, what each holds)."""
    config = state.config()
    db = state.db()
    next_times = next_fire_times(state.registry.specs(config), SystemClock().now())
    stale_after_s = heartbeats.stale_after_s(state.settings.heartbeat_interval_s)
    try:
        with db.begin() as conn:
            rows = campaign_rows(conn, config, next_times)
            sending = zone_progress(conn)
            nodes = node_rows(conn, stale_after_s)
            if as_json:
                click.echo(json.dumps({"campaigns": rows, "checks": check_rows(conn, config),
                                       "sending_by_zone": sending, "nodes": nodes},
                                      indent=2, default=str))
                return
            console.print(campaigns_table(rows))
            if sending:
                console.print(zones_table(sending))
            console.print(checks_table(conn, config))
            console.print(nodes_table(nodes))
    finally:
        db.dispose()


def _known(config: LoadedConfig, name: str) -> None:
    if name not in config.campaigns:
        raise UnknownCampaign(name)


@click.command("run-job")
@click.argument("name")
@click.pass_obj
@friendly_errors
def run_job(state: State, name: str) -> None:
    """Fire campaign NAME now, once, through the same claim path as the scheduler."""
    config = state.config()
    _known(config, name)

    async def _go() -> int:
        ctx = ServiceContext(state.settings, config, state.db())
        engine = Engine(ctx, state.registry)
        engine.specs = state.registry.specs(config)
        run_id = await engine.run_now(name)
        with ctx.begin() as conn:
            run = run_store.get(conn, run_id) if run_id else None
        if run is None:
            console.print("not claimed (another node owns this occurrence)", markup=False)
            return 1
        console.print(f"run {run.id} of {name}: {run.status}"
                      + (f" — {run.detail}" if run.detail else ""), markup=False)
        return 0 if run.status in ("done", "held") else 1

    sys.exit(asyncio.run(_go()))


@click.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why; shown in status and reports.")
@click.pass_obj
@friendly_errors
def pause(state: State, name: str, reason: str) -> None:
    """Pause campaign NAME (a running send stops within one batch)."""
    config = state.config()
    _known(config, name)
    with state.db().begin() as conn:
        added = pauses.add(conn, name, pauses.MANUAL, SystemClock().now(), detail=reason,
                           by="cli")
    console.print(f"{name}: paused ({reason})" if added else f"{name}: already paused manually",
                  markup=False)


@click.command()
@click.argument("name")
@click.pass_obj
@friendly_errors
def resume(state: State, name: str) -> None:
    """Clear the manual pause of campaign NAME; other pause reasons stay."""
    config = state.config()
    _known(config, name)
    with state.db().begin() as conn:
        removed = pauses.remove(conn, name, pauses.MANUAL, SystemClock().now())
        others = [p.reason for p in pauses.reasons(conn, name)]
    msg = f"{name}: manual pause cleared" if removed else f"{name}: was not paused manually"
    if others:
        msg += f"; still paused by {', '.join(others)}"
    console.print(msg, markup=False)


@click.command()
@click.option("--max-age-s", default=60.0, show_default=True,
              help="A heartbeat older than this counts as dead.")
@click.pass_obj
@friendly_errors
def health(state: State, max_age_s: float) -> None:
    """Exit 0 if this node's service heartbeat is fresh, 1 otherwise (container checks).

    Never migrates (a probe must not change the schema under a running service); the age is
    the database's, by the clock that stamped the beat.
    """
    engine = state.db(migrate=False)
    try:
        with engine.begin() as conn:
            age_s = heartbeats.age_of(conn, state.settings.node_name, "service")
    finally:
        engine.dispose()
    if age_s is not None and age_s < max_age_s:
        console.print(f"healthy: last heartbeat {age_s:.0f}s ago", markup=False)
        return
    console.print("unhealthy: no recent heartbeat" if age_s is None
                  else f"unhealthy: last heartbeat {age_s:.0f}s ago", markup=False)
    sys.exit(1)


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.pass_obj
@friendly_errors
def db_upgrade(state: State) -> None:
    """Apply migrations up to the latest."""
    engine = make_engine(state.settings.database_url)
    upgrade(engine)
    console.print(f"{mask_url(state.settings.database_url)}: at revision "
                  f"{current_revision(engine)}", markup=False)
