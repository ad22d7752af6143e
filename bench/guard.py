"""Benchmark the guard: 1,000 HTTP checks against local servers at a 10 s interval.

Prints: CPU share of the guard process (one core = 100%), check start lateness p50/p99, and for
one guarded campaign the time from "server stops" to "campaign paused", against the bound the
config implies (timeout + retry_interval x (failure_threshold - 1), counted from the first
failing check; from the server stop add up to one interval for that check to come due).

    .venv/bin/python bench/guard.py            # 1,000 checks, 60 s
    .venv/bin/python bench/guard.py --quick    # 200 checks, 40 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.guard.runner import Guard
from martech.compose import load_config
from scheduler.clock import SystemClock
from scheduler.context import ServiceContext
from scheduler.settings import Settings
from scheduler.store.db import make_engine, upgrade
from scheduler.store.tables import check_results, pauses
from tests.http_server import HttpServer

SERVERS = 8
# The target servers run in another process so their CPU is not counted as the guard's.
SERVER_CODE = """
import asyncio, sys
from aiohttp import web
async def main(n):
    async def ok(_r): return web.Response(text="ok")
    app = web.Application(); app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None); await runner.setup()
    ports = []
    for _ in range(n):
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024); await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1])))
"""


def write_config(root: Path, ports: list[int], guarded_url: str, checks: int) -> Path:
    cfg = root / "config"
    (cfg / "campaigns").mkdir(parents=True)
    (cfg / "campaigns" / "digest.yaml").write_text(textwrap.dedent("""
        name: digest
        kind: newsletter
        schedule: {cron: "0 9 * * MON"}
        audience: {csv: a.csv}
        from: "A <a@acme.example>"
        subject: hi
        template: t
        requires: [guarded]
    """))
    lines = [
        "defaults: {interval: 10s, timeout: 2s, retry_interval: 2s, failure_threshold: 3,"
        " success_threshold: 2}",
        "max_concurrent_checks: 200",
        "checks:",
        f'  guarded: {{http: {{url: "{guarded_url}/"}}}}',
    ]
    lines += [f'  c{i:04d}: {{http: {{url: "http://127.0.0.1:{ports[i % len(ports)]}/"}}}}'
              for i in range(checks)]
    (cfg / "checks.yaml").write_text("\n".join(lines) + "\n")
    return cfg


async def bench(checks: int, duration_s: float) -> int:
    proc = subprocess.Popen([sys.executable, "-c", SERVER_CODE, str(SERVERS)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ports = [int(p) for p in proc.stdout.readline().split()]
    guarded = await HttpServer().start()
    tmp = Path(tempfile.mkdtemp(prefix="guard-bench-"))
    try:
        cfg = write_config(tmp, ports, guarded.url, checks)
        url = f"sqlite:///{tmp}/bench.db"
        db = make_engine(url)
        upgrade(db)
        settings = Settings(database_url=url, config_dir=cfg, var_dir=tmp / "var",
                            node_name="bench", _env_file=None)  # type: ignore[call-arg]
        ctx = ServiceContext(settings, load_config(cfg), db, SystemClock())
        guard = Guard(ctx)
        runner = asyncio.create_task(guard.run())
        # Start-up: first runs spread over 5 s, one retry each (success_threshold 2), then
        # every check moves onto its phase slot within an interval: measure after that.
        warmup_s = 20.0
        await asyncio.sleep(warmup_s)
        guard.stats.lateness_s.clear()
        load0 = loadavg()
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(max(duration_s - 30.0, 3.0))
        # Outage of the guarded site: time until the campaign is paused.
        stop_wall = ctx.clock.now()
        await guarded.stop()
        paused_at = None
        while paused_at is None and time.monotonic() - wall0 < duration_s + 30:
            await asyncio.sleep(0.05)
            with db.begin() as conn:
                row = conn.execute(sa.select(pauses.c.since).where(
                    pauses.c.campaign == "digest")).first()
            paused_at = row.since if row else None
        cpu1, wall1 = time.process_time(), time.monotonic()
        ctx.stopping.set()
        await asyncio.wait_for(runner, 10)
        with db.begin() as conn:
            first_fail = conn.execute(sa.select(sa.func.min(check_results.c.at)).where(
                check_results.c.check_name == "guarded", check_results.c.outcome == "fail")
            ).scalar_one()
            results = conn.execute(sa.select(sa.func.count()).select_from(check_results)
                                   ).scalar_one()
        lateness = sorted(guard.stats.lateness_s)
        p99 = lateness[int(len(lateness) * 0.99) - 1] if lateness else float("nan")
        rules = guard.entries["guarded"].rules
        bound = rules.pause_bound()
        cpu_share = (cpu1 - cpu0) / (wall1 - wall0)
        print(f"checks: {checks + 1} http at 10 s interval; measured {wall1 - wall0:.0f} s "
              f"after {warmup_s:.0f} s warm-up; {results} results stored")
        print(f"load average (1 min) {load0} at the start of the measurement, {loadavg()} "
              f"at the end, on {os.cpu_count()} CPUs (other processes share them)")
        print(f"CPU share of one core: {cpu_share:.1%}  (target < 25%)")
        print(f"check start lateness: p50 {statistics.median(lateness) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms over {len(lateness)} starts  (target p99 < 1 s)")
        ok = cpu_share < 0.25 and p99 < 1.0
        if paused_at is None or first_fail is None:
            print("campaign was NOT paused")
            ok = False
        else:
            detect = paused_at - first_fail
            total = paused_at - stop_wall
            within = detect <= bound
            ok = ok and within
            print(f"pause: {detect.total_seconds():.2f} s from the first failing check "
                  f"(bound {bound.total_seconds():.0f} s: timeout + retry_interval x "
                  f"(failure_threshold - 1)) -> {'within' if within else 'OVER'}; "
                  f"{total.total_seconds():.2f} s from the server stop "
                  f"(<= bound + interval {(bound + rules.interval).total_seconds():.0f} s: "
                  f"{'yes' if total <= bound + rules.interval + timedelta(seconds=1) else 'NO'})")
        await guard.close()
        db.dispose()
        return 0 if ok else 1
    finally:
        await guarded.stop()
        proc.terminate()
        proc.wait(5)


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 checks, 40 s")
    parser.add_argument("--checks", type=int, default=None)
    parser.add_argument("--duration-s", type=float, default=None)
    args = parser.parse_args()
    checks = args.checks or (200 if args.quick else 1000)
    duration_s = args.duration_s or (40.0 if args.quick else 60.0)
    return asyncio.run(bench(checks, duration_s))


if __name__ == "__main__":
    sys.exit(main())
