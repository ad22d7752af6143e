"""The guard at run time: runs every check on its own interval, at its own phase of it
(``guard_timing``), concurrently under a bound, never overlapping itself, and hands results
to the decision code in batches.

With several nodes, each check is probed by the one node holding its lease
(``check_store.hold_leases``, taken and renewed in the housekeeping pass, expiring by the
database's clock): every node keeps the schedule, only the holder probes, so a check runs
once per interval cluster-wide and its verdict counts results, not nodes. A result carries the
lease generation it was probed under and is dropped if the lease changed hands meanwhile
(ARCHITECTURE.md, invariant 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from jobs.guard.checks.base import CheckResult, Probe, run_probe
from jobs.guard.checks.factory import build_probe
from jobs.guard.checks.http import new_session
from jobs.guard.decide import (
    Change,
    Env,
    Observed,
    apply_batch,
    reconcile,
    send_reminders,
    sync_maintenance,
)
from jobs.guard.hysteresis import Rules, initial
from jobs.guard.hysteresis import apply as fold
from jobs.guard.targets import CONNECTIVITY
from jobs.guard.timing import first_due, next_due, slot_at_or_before
from scheduler import outbox
from scheduler.config.checks import CheckConfig
from scheduler.context import ServiceContext
from scheduler.store import checks as check_store
from scheduler.store.checks import StateRow
from scheduler.store.heartbeats import stale_after_s

log = logging.getLogger("martech.guard")

HOUSEKEEPING_S = 1.0  # maintenance windows and reminders are looked at this often
MAX_SLEEP_S = 0.5
MIN_SLEEP_S = 0.01  # checks falling due within this are started together
LEASE_RENEWALS = 4  # a check lease is renewed this many times per lease period


@dataclass
class Entry:
    name: str
    config: CheckConfig
    probe: Probe
    rules: Rules
    next_due: datetime
    task: asyncio.Task[None] | None = None
    state: StateRow | None = None


@dataclass
class GuardStats:
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    runs: int = 0
    not_leased: int = 0  # due runs left to the node holding the check's lease
    last: dict[str, CheckResult] = field(default_factory=dict)


class Guard:
    """Drive with :meth:`run` (the service) or :meth:`tick` (tests, with a fake clock)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.entries: dict[str, Entry] = {}
        self.stats = GuardStats()
        self._config_seen: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._sem = asyncio.Semaphore(ctx.config.checks.max_concurrent_checks)
        self._pending: list[Observed] = []
        self._flush_lock = asyncio.Lock()
        self._next_housekeeping: datetime | None = None
        self._connectivity_probe: asyncio.Future[CheckResult] | None = None
        self._connectivity_last: tuple[datetime, CheckResult] | None = None
        # (due, seq, name) of checks waiting for their next run: a tick looks at the due
        # ones only, not at every check. Stale items (config changed) are skipped on pop.
        self._queue: list[tuple[datetime, int, str]] = []
        self._seq = itertools.count()
        self.changes: list[Change] = []
        self.leases: dict[str, int] = {}  # checks this node probes: name -> lease generation
        self._next_lease_pass: datetime | None = None

    @property
    def lease_s(self) -> float:
        """As long as a node's liveness window: a dead node's checks move on with its runs."""
        return stale_after_s(self.ctx.settings.heartbeat_interval_s)

    # -- configuration -----------------------------------------------------------------

    @property
    def env(self) -> Env:
        return Env(self.ctx.config, Path(self.ctx.settings.templates_dir), self.ctx.node)

    def _configured(self) -> dict[str, CheckConfig]:
        checks = self.ctx.config.checks
        out = dict(checks.checks)
        if checks.connectivity is not None:
            out[CONNECTIVITY] = checks.connectivity
        return out

    def _resolve_paths(self, cfg: CheckConfig) -> CheckConfig:
        """``ca_file`` in checks.yaml is relative to the config directory."""
        kind = cfg.probe_kind
        spec = getattr(cfg, kind)
        ca_file = getattr(spec, "ca_file", None)
        if not ca_file:
            return cfg
        return cfg.model_copy(update={kind: spec.model_copy(
            update={"ca_file": str(self.ctx.config.path(ca_file))})})

    def sync_config(self, now: datetime) -> None:
        """(Re)build entries when the config object changed; keep due times of unchanged ones."""
        if self._config_seen is self.ctx.config:
            return
        self._config_seen = self.ctx.config
        if self._session is None:
            self._session = new_session(self.ctx.config.checks.max_concurrent_checks)
        self._sem = asyncio.Semaphore(self.ctx.config.checks.max_concurrent_checks)
        defaults = self.ctx.config.checks.defaults
        fresh: dict[str, Entry] = {}
        for name, cfg in self._configured().items():
            old = self.entries.get(name)
            if old is not None and old.config == cfg:
                fresh[name] = old
                continue
            probe = build_probe(self._resolve_paths(cfg), self._session, self.ctx.clock,
                                self.ctx.settings.smtp_helo_name)
            rules = Rules.of(cfg, defaults)
            fresh[name] = entry = Entry(name, cfg, probe, rules,
                                        first_due(name, rules.interval, now),
                                        state=old.state if old else None)
            if old is not None and old.task is not None and not old.task.done():
                entry.task = old.task  # the old probe's run still counts: no overlap
            self._enqueue(entry)
        self.entries = fresh

    def _enqueue(self, entry: Entry) -> None:
        heapq.heappush(self._queue, (entry.next_due, next(self._seq), entry.name))

    def _pop_due(self, now: datetime) -> list[Entry]:
        due: list[Entry] = []
        busy: list[Entry] = []
        while self._queue and self._queue[0][0] <= now:
            at, _, name = heapq.heappop(self._queue)
            entry = self.entries.get(name)
            if entry is None or entry.next_due != at:
                continue  # removed, or rescheduled since this item was queued
            if entry.task is not None and not entry.task.done():
                busy.append(entry)  # its previous config's run is not over: never overlap
            else:
                due.append(entry)
        for entry in busy:
            self._enqueue(entry)
        return due

    # -- one pass ----------------------------------------------------------------------

    async def start(self) -> None:
        now = self.ctx.clock.now()
        self.sync_config(now)
        states = await self.ctx.in_thread(self._load_states)
        for name, entry in self.entries.items():
            entry.state = states.get(name)
        await self._housekeeping(now)

    def _load_states(self) -> dict[str, StateRow]:
        with self.ctx.begin() as conn:
            return check_store.all_states(conn)

    async def tick(self, now: datetime | None = None, *, wait: bool = True) -> list[str]:
        """Start every due check; with ``wait`` also await them and record the results."""
        now = now or self.ctx.clock.now()
        self.sync_config(now)
        if self._next_housekeeping is None or now >= self._next_housekeeping:
            self._next_housekeeping = now + timedelta(seconds=HOUSEKEEPING_S)
            await self._housekeeping(now)
        started = []
        for entry in self._pop_due(now):
            gen = self.leases.get(entry.name)
            if gen is None:
                self._leave_to_holder(entry)
                continue
            entry.task = asyncio.create_task(self._check(entry, entry.next_due, gen),
                                             name=f"check-{entry.name}")
            started.append(entry.name)
        if wait:
            tasks = [self.entries[n].task for n in started]
            await asyncio.gather(*[t for t in tasks if t is not None])
            await self.flush()
        return started

    def _leave_to_holder(self, entry: Entry) -> None:
        """Another node holds this check's lease and probes it: keep the schedule (to probe
        on time if the lease comes here), skip this run."""
        self.stats.not_leased += 1
        entry.next_due = slot_at_or_before(entry.name, entry.rules.interval,
                                           entry.next_due + entry.rules.interval)
        self._enqueue(entry)

    async def _check(self, entry: Entry, due: datetime, lease_gen: int) -> None:
        begun = due
        try:
            async with self._sem:
                begun = self.ctx.clock.now()
                self.stats.lateness_s.append(max((begun - due).total_seconds(), 0.0))
                result = await run_probe(entry.probe, entry.rules.timeout.total_seconds())
                if result.outcome == "fail" and entry.name != CONNECTIVITY:
                    result = await self._blind(result)
            self.stats.runs += 1
            self.stats.last[entry.name] = result
            state = entry.state or initial(entry.name, begun)
            # Provisional schedule from the local view; the batch write refreshes the state.
            entry.state, _ = fold(state, result.outcome, entry.rules, begun, result.detail)
            entry.next_due = next_due(entry.name, entry.state, entry.rules, due, begun)
            self._pending.append(Observed(entry.name, begun, result, lease_gen))
        finally:
            if entry.next_due == due:  # cancelled or failed before rescheduling
                entry.next_due = max(due, begun) + entry.rules.retry_interval
            if self.entries.get(entry.name) is entry:
                self._enqueue(entry)

    async def _blind(self, result: CheckResult) -> CheckResult:
        """A failure while the guard's own connectivity check fails is ``unknown``."""
        entry = self.entries.get(CONNECTIVITY)
        if entry is None:
            return result
        now = self.ctx.clock.now()
        fresh_for = entry.rules.retry_interval
        if self._connectivity_last and now - self._connectivity_last[0] < fresh_for:
            seen = self._connectivity_last[1]
        else:
            if self._connectivity_probe is None or self._connectivity_probe.done():
                self._connectivity_probe = asyncio.ensure_future(
                    run_probe(entry.probe, entry.rules.timeout.total_seconds()))
            seen = await asyncio.shield(self._connectivity_probe)
            self._connectivity_last = (now, seen)
        if seen.ok:
            return result
        return CheckResult("unknown", result.latency_ms,
                           f"guard cannot see the network ({seen.detail}); {result.detail}")

    async def flush(self) -> list[Change]:
        """Write pending results and act on verdict changes, in one transaction."""
        async with self._flush_lock:
            batch, self._pending = self._pending, []
            if not batch:
                return []
            try:
                changes = await self.ctx.in_thread(self._apply_sync, batch)
            except BaseException:
                # The transaction rolled back: keep the batch, ahead of results observed
                # meanwhile, for the next flush, or a DB blip would erase failures from
                # the counters and delay the pause.
                self._pending[:0] = batch
                raise
        self.changes.extend(changes)
        if changes:
            _wake_outbox(self.ctx)
        return changes

    def _apply_sync(self, batch: list[Observed]) -> list[Change]:
        with self.ctx.begin() as conn:
            changes, states = apply_batch(conn, self.env, batch)
        for name, state in states.items():
            entry = self.entries.get(name)
            if entry is not None:
                entry.state = state
        return changes

    async def _housekeeping(self, now: datetime) -> None:
        lease_pass = self._next_lease_pass is None or now >= self._next_lease_pass
        if lease_pass:
            self._next_lease_pass = now + timedelta(seconds=self.lease_s / LEASE_RENEWALS)
        taken = await self.ctx.in_thread(self._housekeeping_sync, now, lease_pass)
        if taken is None:
            return
        held, states = taken
        for name in held.keys() - self.leases.keys():
            log.info("probing check %s here (lease %d)", name, held[name],
                     extra={"action": "check_lease", "check": name})
        self.leases = held
        for name, state in states.items():
            entry = self.entries.get(name)
            if entry is not None:
                entry.state = state  # newly ours: the verdict so far is the others' doing

    def _housekeeping_sync(self, now: datetime, lease_pass: bool = False
                           ) -> tuple[dict[str, int], dict[str, StateRow]] | None:
        env = self.env
        with self.ctx.begin() as conn:
            reconcile(conn, env, now)
            sync_maintenance(conn, env, now)
            # Leases before verdicts, as in apply_batch: two nodes taking the two kinds of
            # row lock in opposite orders deadlocked on PostgreSQL.
            held = (check_store.hold_leases(conn, self.entries, self.ctx.node, self.lease_s)
                    if lease_pass else None)
            send_reminders(conn, env, now)
            if held is None:
                return None
            fresh = [n for n, gen in held.items() if self.leases.get(n) != gen]
            return held, check_store.states(conn, fresh)

    # -- the service loop --------------------------------------------------------------

    async def run(self) -> None:
        await self.start()
        log.info("guard running", extra={"action": "guard_start", "checks": len(self.entries)})
        writer = asyncio.create_task(self._writer(), name="guard-writer")
        try:
            while not self.ctx.stopping.is_set():
                try:
                    await self.tick(wait=False)
                except Exception:
                    log.exception("guard tick failed; retrying", extra={"action": "guard_error"})
                await self._sleep_until_due()
        finally:
            try:
                writer.cancel()
                tasks = [e.task for e in self.entries.values() if e.task and not e.task.done()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(writer, *tasks, return_exceptions=True)
                await self.flush()  # results already observed are evidence: keep them
                await self.ctx.in_thread(self._release_leases)
            finally:
                await self.close()

    async def _writer(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording check results failed; retrying",
                              extra={"action": "guard_error"})

    async def _sleep_until_due(self) -> None:
        now = self.ctx.clock.now()
        delay = MAX_SLEEP_S
        if self._queue:
            delay = min(max((self._queue[0][0] - now).total_seconds(), 0.0), MAX_SLEEP_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ctx.stopping.wait(), max(delay, MIN_SLEEP_S))

    def _release_leases(self) -> None:
        try:
            with self.ctx.begin() as conn:
                check_store.release_leases(conn, self.ctx.node)
        except Exception:  # the leases then expire on their own
            log.warning("could not hand check leases over at stop", exc_info=True,
                        extra={"action": "guard_error"})
        self.leases = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _wake_outbox(ctx: ServiceContext) -> None:
    """Alerts were queued: nudge the outbox sender rather than wait for its next poll."""
    outbox.wake(ctx)
