"""``martech run``: the long-running service — start, reload on SIGHUP or file change, stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from rich.console import Console

from scheduler.clock import Clock, SystemClock
from scheduler.config.loader import LoadedConfig, config_fingerprint, load_config
from scheduler.context import ServiceContext
from scheduler.delivery import budget as render_budget
from scheduler.engine import Engine
from scheduler.errors import ConfigError
from scheduler.http_app import run_http_app
from scheduler.keys import signer_for
from scheduler.kinds import Registry, ServiceComponent
from scheduler.outbox import run_outbox
from scheduler.settings import Settings
from scheduler.signals import run_listener
from scheduler.status import checks_table, schedule_table
from scheduler.store.db import make_engine, upgrade
from scheduler.workers import WorkerPool, supervise

log = logging.getLogger("martech.service")


def load_and_validate(settings: Settings, registry: Registry) -> LoadedConfig:
    """Schema, cross-references and per-kind checks (templates, audiences).

    :raises ConfigError: with every problem found.
    """
    config = load_config(settings.config_dir, registry.campaign_types)
    problems = registry.validate(config, settings)
    if problems:
        raise ConfigError(problems)
    return config


class Service:
    def __init__(self, settings: Settings, registry: Registry, *, clock: Clock | None = None,
                 console: Console | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock or SystemClock()
        self.console = console or Console()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.ctx: ServiceContext | None = None
        self.engine: Engine | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self, config: LoadedConfig) -> int:
        """:raises InsecureSecretKey: a public URL with a guessable key; nothing is started."""
        signer_for(self.settings)  # refuse before anything listens; log a generated key
        render_budget.configure(self.settings.render_budget_ms)
        db = make_engine(self.settings.database_url)
        await asyncio.to_thread(upgrade, db)
        self.ctx = ctx = ServiceContext(self.settings, config, db, self.clock)
        self.engine = engine = Engine(ctx, self.registry)
        self._install_signals()
        await engine.start()
        self.console.print(schedule_table(engine))
        with ctx.begin() as conn:
            self.console.print(checks_table(conn, config))
        log.info("martech running", extra={"action": "start", "node": ctx.node,
                                           "schedules": len(engine.specs)})
        components = [asyncio.create_task(supervise(ctx, name, comp), name=name)
                      for name, comp in self.components().items()]
        watcher = asyncio.create_task(self._watch_config(), name="config-watch")
        pool = self._start_workers()
        await self._stop.wait()
        log.info("stopping: finishing or checkpointing in-flight work",
                 extra={"action": "stop"})
        watcher.cancel()
        timeout_s = self.settings.shutdown_timeout_s
        await asyncio.gather(engine.stop(timeout_s),
                             *([pool.stop(timeout_s)] if pool is not None else []))
        for task in components:
            task.cancel()
        await asyncio.gather(watcher, *components, return_exceptions=True)
        db.dispose()
        log.info("stopped", extra={"action": "stopped"})
        return 0

    def _start_workers(self) -> WorkerPool | None:
        """MARTECH_WORKERS - 1 worker processes, when the build can start them."""
        count = self.settings.resolved_workers - 1
        if count < 1 or not self.registry.worker_argv:
            return None
        pool = WorkerPool(self.settings, self.registry.worker_argv, count)
        pool.start()
        return pool

    def components(self) -> dict[str, ServiceComponent]:
        """The mechanisms every service runs (the outbox that carries reminders and IT's
        alerts, the HTTP app with the kinds' routes, the LISTEN connection that wakes this
        node on pause changes and unsubscribes), then the kinds' own components."""

        async def http(ctx: ServiceContext) -> None:
            await run_http_app(ctx, self.registry.http_routes)

        async def signals(ctx: ServiceContext) -> None:
            await run_listener(ctx.db.url, ctx.signals, ctx.stopping)

        return {"outbox": run_outbox, "http": http, "signals": signals,
                **self.registry.components}

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass

    async def _watch_config(self) -> None:
        assert self.ctx is not None
        seen = config_fingerprint(self.settings.config_dir)
        while True:
            try:
                seen = await self._watch_once(seen)
            except asyncio.CancelledError:
                raise
            except Exception:  # e.g. a file vanishing mid-scan: the watcher keeps watching
                log.exception("config watch failed; still watching",
                              extra={"action": "reload_failed"})
                await asyncio.sleep(self.settings.reload_poll_s)

    async def _watch_once(self, seen: dict[Path, float]) -> dict[Path, float]:
        """Wait for SIGHUP or a file change (one poll); reload; return the new fingerprint."""
        try:
            await asyncio.wait_for(self._reload.wait(), self.settings.reload_poll_s)
            self._reload.clear()
            reason = "SIGHUP"
        except TimeoutError:
            if config_fingerprint(self.settings.config_dir) == seen:
                return seen
            reason = "config files changed"
        seen = config_fingerprint(self.settings.config_dir)
        self.reload(reason)
        return seen

    def reload(self, reason: str) -> bool:
        """Load the new config; keep the old one running if it is invalid."""
        assert self.ctx is not None and self.engine is not None
        try:
            config = load_and_validate(self.settings, self.registry)
            self.engine.reload(config)  # builds every spec before swapping anything
        except ConfigError as exc:
            log.error("config reload rejected (%s); the previous config keeps running:\n%s",
                      reason, exc, extra={"action": "reload_rejected",
                                          "problems": len(exc.problems)})
            return False
        except Exception:
            # A bug in a job kind (or an unreadable file) must not kill the config watcher.
            log.exception("config reload failed (%s); the previous config keeps running",
                          reason, extra={"action": "reload_failed"})
            return False
        log.info("config reloaded (%s)", reason, extra={"action": "reload",
                                                       "schedules": len(self.engine.specs)})
        return True
