"""Several processes per node (issue 14): ``martech run`` spawns ``workers - 1`` worker processes.

A worker runs only the components the kinds mark as worker-safe (``Registry.worker_components``:
the newsletter's send helper), never the engine, the HTTP app or the guard. It claims batches
from the same ledger with the same leases and fences that serve several nodes, under the node
name ``<node>/w<i>``, so nothing in the ledger tells a worker from another node. The parent
hands its exact settings over stdin (secrets stay out of argv and the environment), restarts a
worker that dies, and at stop sends SIGTERM (each worker finishes the batch it holds) and reaps
them, killing what is left after ``shutdown_timeout_s``. A worker whose parent vanished
(``kill -9``) stops by itself within one poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr

from scheduler.config.loader import LoadedConfig, config_fingerprint, load_config
from scheduler.context import ServiceContext
from scheduler.kinds import Registry, ServiceComponent
from scheduler.settings import Settings
from scheduler.signals import run_listener
from scheduler.store import heartbeats
from scheduler.store.db import make_engine

log = logging.getLogger("martech.workers")

PARENT_POLL_S = 1.0
RESTART_BACKOFF_MAX_S = 60.0


def worker_name(node: str, index: int) -> str:
    return f"{node}/w{index}"


def settings_payload(settings: Settings) -> dict[str, Any]:
    """Every setting as JSON values, secrets in clear: only ever written to a worker's stdin."""
    values: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
        values[name] = value if isinstance(value, int | float | str | list | None) else str(value)
    return values


def worker_payload(settings: Settings, name: str) -> bytes:
    """What a worker reads on stdin: its settings (node name ``name``) and its parent's pid,
    which it checks its own parent against (a parent gone before the worker started too)."""
    values = settings_payload(settings) | {"node_name": name}
    return json.dumps({"parent_pid": os.getpid(), "settings": values}).encode()


def read_payload(payload: bytes) -> tuple[Settings, int]:
    data = json.loads(payload)
    return Settings(**data["settings"]), int(data["parent_pid"])


class WorkerPool:
    """The worker processes of one service: started, kept alive, stopped and reaped."""

    def __init__(self, settings: Settings, argv: list[str], count: int) -> None:
        self.settings = settings
        self.argv = argv
        self.count = count
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep(i), name=f"worker-{i}")
                       for i in range(1, self.count + 1)]

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        name = worker_name(self.settings.node_name, index)
        proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(worker_payload(self.settings, name))
        await proc.stdin.drain()
        proc.stdin.close()
        log.info("worker %s started (pid %d)", name, proc.pid,
                 extra={"action": "worker_start", "worker": name, "pid": proc.pid})
        return proc

    async def _keep(self, index: int) -> None:
        """Run worker ``index``; a worker that exits before the stop is logged and restarted."""
        backoff_s = 1.0
        name = worker_name(self.settings.node_name, index)
        while not self._stopping.is_set():
            try:
                self.procs[index] = proc = await self._spawn(index)
            except OSError:  # e.g. out of processes: the service sends on without it
                log.exception("cannot start worker %s; retrying in %.0fs", name, backoff_s,
                              extra={"action": "worker_died", "worker": name})
            else:
                code = await proc.wait()
                if self._stopping.is_set():
                    return
                log.error("worker %s (pid %d) exited with %d; restarting in %.0fs", name,
                          proc.pid, code, backoff_s, extra={
                              "action": "worker_died", "worker": name, "pid": proc.pid,
                              "code": code})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff_s)
            backoff_s = min(backoff_s * 2, RESTART_BACKOFF_MAX_S)

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM every worker (each finishes its batch), wait ``timeout_s``, kill the rest."""
        self._stopping.set()
        live = [p for p in self.procs.values() if p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), timeout_s)
        except TimeoutError:
            for proc in live:
                if proc.returncode is None:
                    log.warning("worker pid %d did not stop in %.0fs; killed", proc.pid,
                                timeout_s, extra={"action": "worker_killed", "pid": proc.pid})
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in live))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def run_worker(settings: Settings, registry: Registry, config: LoadedConfig,
                     parent_pid: int) -> int:
    """A worker process's life: the worker components until SIGTERM/SIGINT or the parent's
    death; config changes are read as the parent reads them (the same files)."""
    db = make_engine(settings.database_url)
    ctx = ServiceContext(settings, config, db)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the parent reloads; we poll files
    log.info("worker running", extra={"action": "worker_running", "node": ctx.node})
    components: dict[str, ServiceComponent] = {
        "signals": lambda c: run_listener(c.db.url, c.signals, c.stopping),
        "worker-heartbeat": _heartbeat,
        **registry.worker_components}
    tasks = [asyncio.create_task(supervise(ctx, name, comp), name=name)
             for name, comp in components.items()]
    watcher = asyncio.create_task(_watch(ctx, registry, parent_pid), name="worker-watch")
    await ctx.stopping.wait()
    watcher.cancel()
    # Each component sees `stopping` and finishes the batch it holds; the parent kills what
    # is still running after its shutdown time.
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(watcher, return_exceptions=True)
    db.dispose()
    log.info("worker stopped", extra={"action": "worker_stopped", "node": ctx.node})
    return 0


async def _heartbeat(ctx: ServiceContext) -> None:
    """Beat as role ``worker``, so ``martech status`` shows a sending worker alive (it owns no
    run: a dead worker's beat makes no one adopt anything; its claims' leases cover it)."""
    def beat() -> None:
        with ctx.begin() as conn:
            heartbeats.beat(conn, ctx.node, "worker")

    while not ctx.stopping.is_set():
        try:
            await ctx.in_thread(beat)
        except sa.exc.SQLAlchemyError:
            log.warning("worker heartbeat failed", exc_info=True, extra={"action": "liveness"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stopping.wait(), ctx.settings.heartbeat_interval_s)


async def supervise(ctx: ServiceContext, name: str, component: ServiceComponent) -> None:
    """Keep a background component alive across its own failures (the service's and a
    worker's), backing off up to a minute; a stop ends the back-off at once."""
    backoff_s = 1.0
    while not ctx.stopping.is_set():
        try:
            await component(ctx)
            return
        except Exception:
            log.exception("component %s crashed; restarting in %.0fs", name, backoff_s,
                          extra={"action": "component_crash", "component": name})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), backoff_s)
            backoff_s = min(backoff_s * 2, RESTART_BACKOFF_MAX_S)


async def _watch(ctx: ServiceContext, registry: Registry, parent_pid: int) -> None:
    """Stop when the parent is gone (re-parented); reload the config when its files change."""
    seen = config_fingerprint(ctx.settings.config_dir)
    poll_s = min(PARENT_POLL_S, ctx.settings.reload_poll_s)
    while True:
        if os.getppid() != parent_pid:
            log.warning("parent %d gone; worker stopping", parent_pid,
                        extra={"action": "worker_orphaned"})
            ctx.stopping.set()
            return
        now = config_fingerprint(ctx.settings.config_dir)
        if now != seen:
            seen = now
            _reload(ctx, registry, ctx.settings.config_dir)
        await asyncio.sleep(poll_s)


def _reload(ctx: ServiceContext, registry: Registry, config_dir: Path) -> None:
    # The same files and checks as the parent's reload: what it rejects, the worker does too.
    try:
        config = load_config(config_dir, registry.campaign_types)
        problems = registry.validate(config, ctx.settings)
        if problems:
            log.error("worker config reload rejected (%d problem(s)); the previous config "
                      "keeps running", len(problems), extra={"action": "reload_rejected"})
            return
        ctx.config = config
    except Exception:
        log.exception("worker config reload failed; the previous config keeps running",
                      extra={"action": "reload_failed"})
