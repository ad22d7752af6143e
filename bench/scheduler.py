"""Scheduler benchmark: start-up with 10,000 schedules, and lateness of 1,000 jobs due at once.

    .venv/bin/python bench/scheduler.py [--quick] [--database-url URL]

Start-up is config load (YAML + validation, including the first import of the job modules)
through ``Engine.start`` returning; the catch-up claim that start-up leaves running in the
background is timed too. Lateness is due -> job started, the figure users feel (the engine's
``on_run_started`` hook, called just before the job kind runs), measured against a naive
baseline in the same run: one INSERT + COMMIT per job in a loop, as a home-made scheduler would
do; due -> claim committed (``on_claimed``) and due -> the kind's own first line are shown
as well. ``--repeat N`` runs it all N times,
each in a fresh process (the machine may be shared: each run prints the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from martech.compose import build_registry
from scheduler.clock import SystemClock, utc
from scheduler.config.campaigns import CampaignBase
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.engine import Engine
from scheduler.engine.claims import ClaimedRun
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.schedules import Schedule
from scheduler.service import load_and_validate
from scheduler.settings import Settings
from scheduler.store.db import make_engine, upgrade
from scheduler.store.runs import RunRow

REPO = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_config(root: Path, n: int) -> None:
    (root / "config").mkdir(parents=True)
    lines = ["reports:"]
    for i in range(n):
        lines.append(f"  - name: r{i:05d}")
        lines.append(f"    schedule: {{cron: \"{i % 60} {i % 24} * * *\", "
                     "timezone: Europe/Berlin}")
        lines.append("    formats: [json]")
    (root / "config" / "reports.yaml").write_text("\n".join(lines) + "\n")


async def startup(n: int, url: str, root: Path) -> dict[str, float]:
    write_config(root, n)
    settings = Settings(config_dir=root / "config", var_dir=root / "var", database_url=url,
                        templates_dir=REPO / "templates" / "email", node_name="bench",
                        _env_file=None)  # type: ignore[call-arg]
    db = make_engine(url)
    upgrade(db)
    rss_before = rss_mb()
    t0 = time.perf_counter()
    registry = build_registry()
    config = load_and_validate(settings, registry)
    t_loaded = time.perf_counter()
    ctx = ServiceContext(settings, config, db, SystemClock())
    engine = Engine(ctx, registry)
    await engine.start()
    t_started = time.perf_counter()
    rss_after = rss_mb()
    await asyncio.wait_for(engine.caught_up.wait(), 60)
    t_caught_up = time.perf_counter()
    await engine.stop(5)
    db.dispose()
    return {"schedules": len(engine.specs), "load_s": t_loaded - t0,
            "start_s": t_started - t0, "catch_up_s": t_caught_up - t_started,
            "rss_mb": rss_after, "rss_delta_mb": rss_after - rss_before}


class BenchCampaign(CampaignBase):
    kind: Literal["bench"]


class NoopKind:
    kind = "bench"
    campaign_model = BenchCampaign

    def __init__(self, schedules: dict[str, Schedule]) -> None:
        self._schedules = schedules
        self.started: list[datetime] = []
        self.done = 0
        self.all_done = asyncio.Event()
        self.target = len(schedules)

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        return [ScheduleSpec(campaign.name, campaign.name, self.kind,
                             self._schedules[campaign.name], timedelta(minutes=5))]

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        self.started.append(datetime.now(UTC))
        self.done += 1
        if self.done >= self.target:
            self.all_done.set()
        return RunResult("done")

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings) -> list[Any]:
        return []


class _Campaign:
    def __init__(self, name: str) -> None:
        self.name, self.kind, self.enabled = name, "bench", True
        self.requires: list[str] = []


async def lateness(n: int, url: str, root: Path) -> dict[str, float]:
    due = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    names = [f"job{i:04d}" for i in range(n)]
    kind = NoopKind({name: Schedule(at=due) for name in names})
    registry = Registry()
    registry.add_kind(kind)
    settings = Settings(config_dir=root, var_dir=root / "var", database_url=url,
                        node_name="bench", _env_file=None)  # type: ignore[call-arg]
    config = LoadedConfig(config_dir=root, campaigns={n_: _Campaign(n_) for n_ in names})
    db = make_engine(url)
    upgrade(db)
    ctx = ServiceContext(settings, config, db, SystemClock())
    late_ms: list[float] = []

    def started(run: RunRow, at: datetime) -> None:
        late_ms.append((at - utc(run.scheduled_at)).total_seconds() * 1000)

    claimed_ms: list[float] = []

    def claimed(runs: list[ClaimedRun], at: datetime) -> None:
        claimed_ms.extend((at - utc(r.scheduled_at)).total_seconds() * 1000 for r in runs)

    engine = Engine(ctx, registry, on_run_started=started, on_claimed=claimed)
    await engine.start()
    await asyncio.wait_for(kind.all_done.wait(), 60)
    await engine.stop(5)
    db.dispose()
    assert len(late_ms) == n, f"started {len(late_ms)} of {n}"
    started_ms = [(at - due).total_seconds() * 1000 for at in kind.started]
    return {"jobs": n, "p50_ms": pct(late_ms, 0.50), "p99_ms": pct(late_ms, 0.99),
            "max_ms": max(late_ms), "mean_ms": statistics.fmean(late_ms),
            "started_p50_ms": pct(started_ms, 0.50), "started_p99_ms": pct(started_ms, 0.99),
            "claimed_p50_ms": pct(claimed_ms, 0.50), "claimed_p99_ms": pct(claimed_ms, 0.99)}


def naive_baseline(n: int, url: str) -> dict[str, float]:
    """One INSERT + COMMIT per due job, in a loop: lateness grows with the queue."""
    db = make_engine(url)
    upgrade(db)
    from scheduler.store.tables import runs

    start = time.perf_counter()
    now = datetime.now(UTC)
    late_ms = []
    for i in range(n):
        with db.begin() as conn:
            conn.execute(sa.insert(runs).values(
                schedule_key=f"naive{i}", campaign=f"naive{i}", kind="bench", scheduled_at=now,
                local_slot="x", status="pending", claimed_at=now))
        late_ms.append((time.perf_counter() - start) * 1000)
    db.dispose()
    return {"jobs": n, "p50_ms": pct(late_ms, 0.50), "p99_ms": pct(late_ms, 0.99)}


def run_once(args: argparse.Namespace, n_schedules: int, n_jobs: int) -> bool:
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = args.database_url
        start = asyncio.run(startup(n_schedules, url or f"sqlite:///{root}/start.db",
                                    root / "start"))
        late = asyncio.run(lateness(n_jobs, url or f"sqlite:///{root}/late.db", root / "late"))
        naive = naive_baseline(n_jobs, f"sqlite:///{root}/naive.db")
    backend = "postgresql" if url and url.startswith("postgresql") else "sqlite"
    print(f"scheduler benchmark ({backend}, {'quick' if args.quick else 'full'}), "
          f"load average {load_before} -> {loadavg()}")
    print(f"  start-up, {start['schedules']:.0f} schedules: {start['start_s']:.2f} s "
          f"(config load {start['load_s']:.2f} s), RSS {start['rss_mb']:.0f} MB "
          f"(+{start['rss_delta_mb']:.0f} MB)   target < 1 s")
    print(f"    then catch-up claim of every schedule committed in {start['catch_up_s']:.2f} s "
          "(in the background)")
    print(f"  due -> job started, {late['jobs']:.0f} jobs due in one second: "
          f"p50 {late['p50_ms']:.0f} ms, "
          f"p99 {late['p99_ms']:.0f} ms, max {late['max_ms']:.0f} ms   target p99 < 250 ms")
    print(f"    due -> claim committed: p50 {late['claimed_p50_ms']:.0f} ms, "
          f"p99 {late['claimed_p99_ms']:.0f} ms; due -> the job's own first line: "
          f"p50 {late['started_p50_ms']:.0f} ms, p99 {late['started_p99_ms']:.0f} ms")
    print(f"  naive baseline (INSERT+COMMIT per job): p50 {naive['p50_ms']:.0f} ms, "
          f"p99 {naive['p99_ms']:.0f} ms")
    ok = start["start_s"] < 1.0 and late["p99_ms"] < 250.0
    print("  targets: " + ("met" if ok else "MISSED"), flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for CI smoke")
    parser.add_argument("--database-url", help="default: a temporary SQLite file")
    parser.add_argument("--repeat", type=int, default=1, help="run N times (default 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n_schedules, n_jobs = (1_000, 200) if args.quick else (10_000, 1_000)
    if args.repeat <= 1:
        return 0 if run_once(args, n_schedules, n_jobs) else 1
    # Each repeat in a fresh process: a warm one would skip the imports start-up pays for.
    argv = [sys.executable, __file__, *(["--quick"] if args.quick else []),
            *(["--database-url", args.database_url] if args.database_url else [])]
    met = sum(subprocess.run(argv, check=False).returncode == 0 for _ in range(args.repeat))
    print(f"targets met in {met} of {args.repeat} runs")
    return 0 if met == args.repeat else 1


if __name__ == "__main__":
    sys.exit(main())
