"""Report benchmark (issue 11): `martech report` on a year of data, beside a naive loop.

    .venv/bin/python bench/report.py [--quick] [--keep DIR] [--repeat N]

A SQLite database built by the project's migrations and filled as retention would hold it a
year in (bench/_report_fill.py): 1M deliveries and ~300k tracking events over the report's
period and the one before it, 50 checks at one result a minute (raw for the last 30 days,
hourly and daily aggregates for the year). Then the report `martech report` writes by default
(every campaign, the last 7 days, HTML + CSV + JSON with charts) is produced in-process
through the same ``build`` the CLI calls, and timed end to end; the first run pays the
imports the CLI pays (matplotlib). Beside it, in the same run, the naive baseline
(bench/_report_naive.py) fetches every row and counts in Python; the headline figures of
both must agree. Exit 1 on a mismatch or when the report takes 2 s or more.
`--quick`: a tenth of the rows (100k deliveries, 5 checks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # before bench/, whose scheduler.py would shadow ours

from _report_fill import Layout, Sizes, fill  # noqa: E402
from _report_naive import headline as naive_headline  # noqa: E402

from jobs.report import charts, render  # noqa: E402
from jobs.report.checkstats import check_rules  # noqa: E402
from jobs.report.cli import _request  # noqa: E402
from jobs.report.produce import Request, build, produce  # noqa: E402
from jobs.report.retention import Ages, catch_up, rules_of  # noqa: E402
from scheduler.config.checks import ChecksFile  # noqa: E402
from scheduler.config.loader import LoadedConfig  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from scheduler.store.db import make_engine, upgrade  # noqa: E402

NOW = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)  # a Monday; partial hour at the edge
TARGET_S = 2.0
COMPARED = ("sent", "delivered", "open_rate", "click_rate", "unsubscribes", "uptime",
            "incidents", "held_sends")


class Newsletter:
    """What the report reads of a campaign: its name and kind."""

    def __init__(self, name: str) -> None:
        self.name, self.kind, self.requires = name, "newsletter", ["check-03"]
        self.tags: list[str] = []
        self.enabled = True

    def schedule_text(self) -> str:
        return "twice a week"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def make_config(tmp: Path, lay: Layout) -> tuple[LoadedConfig, Settings]:
    start, length = lay.maintenance
    checks = ChecksFile.model_validate({
        "defaults": {"interval": "60s", "timeout": "5s"},
        "checks": {name: {"tcp": {"host": "127.0.0.1", "port": 9}}
                   for name in lay.check_names()},
        "maintenance": [{"name": "db", "start": start.strftime("%Y-%m-%d %H:%M"),
                         "duration": f"{int(length.total_seconds())}s", "pauses": "all"}]})
    config = LoadedConfig(config_dir=tmp, checks=checks,
                          campaigns={n: Newsletter(n) for n in lay.campaign_names()})
    settings = Settings(var_dir=tmp / "var", templates_dir=HERE.parent / "templates" / "email",
                        config_dir=tmp, database_url=f"sqlite:///{tmp / 'bench.db'}",
                        _env_file=None)  # type: ignore[call-arg]
    return config, settings


def prepare(tmp: Path, lay: Layout, config: LoadedConfig, settings: Settings) -> Any:
    path = tmp / "bench.db"
    engine = make_engine(settings.database_url)
    started = time.perf_counter()
    upgrade(engine)
    engine.dispose()
    migrated = time.perf_counter()
    rows = fill(path, lay)
    filled = time.perf_counter()
    ages = Ages(timedelta(seconds=settings.retention_raw_age_s),
                timedelta(seconds=settings.retention_hourly_age_s))
    steps = catch_up(engine, rules_of(config), NOW, ages)
    rolled = time.perf_counter()
    print("rows: " + ", ".join(f"{t} {n:,}" for t, n in rows.items()))
    print(f"migrations {migrated - started:.1f} s, fill {filled - migrated:.1f} s, "
          f"retention rollup of the raw days {rolled - filled:.1f} s ({steps} chunks); "
          f"{path.stat().st_size / 1e6:,.0f} MB")
    engine.dispose()
    return make_engine(settings.database_url)  # a fresh pool: no connection warmed by the fill


def timed_build(config: LoadedConfig, settings: Settings, engine: Any, req: Request,
                out: Path) -> tuple[float, Any]:
    started = time.perf_counter()
    report, _paths = build(config, settings, engine, req, NOW, out_dir=out)
    return time.perf_counter() - started, report


def stages(config: LoadedConfig, settings: Settings, engine: Any, req: Request) -> str:
    """One more (warm) run, stage by stage: catch-up + queries, charts, each render."""
    marks = [time.perf_counter()]
    report = produce(config, engine, req, NOW)
    marks.append(time.perf_counter())
    images = charts.charts(report)
    marks.append(time.perf_counter())
    render.render_html(report, settings.templates_dir, images)
    marks.append(time.perf_counter())
    render.render_csv(report)
    render.render_json(report)
    marks.append(time.perf_counter())
    names = ("queries", "charts", "HTML", "CSV+JSON")
    return ", ".join(f"{n} {1000 * (b - a):.0f} ms" for n, a, b in zip(names, marks, marks[1:],
                                                                       strict=False))


def compare(report: Any, naive: dict[str, dict[str, float | None]]) -> list[str]:
    ours = {h.name: {"now": h.value, "before": h.previous} for h in report.headline}
    bad = []
    print(f"{'figure':<14}{'report':>16}{'naive':>16}{'report before':>16}"
          f"{'naive before':>16}")
    for key in COMPARED:
        a, b = ours[key], naive[key]
        print(f"{key:<14}{a['now']!s:>16}{b['now']!s:>16}{a['before']!s:>16}"
              f"{b['before']!s:>16}")
        for when in ("now", "before"):
            if b[when] is not None and a[when] != b[when]:
                bad.append(f"{key} ({when}): report {a[when]}, naive {b[when]}")
    if not ours["sent"]["now"] or not ours["uptime"]["now"]:
        bad.append("the report found nothing: the fill or the period is wrong")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the rows")
    parser.add_argument("--keep", type=Path, help="build the database here and keep it")
    parser.add_argument("--repeat", type=int, default=3, help="warm runs after the first")
    args = parser.parse_args()
    sizes = Sizes(100_000, 5) if args.quick else Sizes(1_000_000, 50)
    lay = Layout(NOW, sizes)
    print(f"start: {load()}")
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp_name:
        tmp = args.keep or Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "bench.db").unlink(missing_ok=True)
        config, settings = make_config(tmp, lay)
        engine = prepare(tmp, lay, config, settings)
        req = _request(config, settings, None, NOW)
        cold, report = timed_build(config, settings, engine, req, tmp / "out")
        warm = [timed_build(config, settings, engine, req, tmp / "out")[0]
                for _ in range(args.repeat)]
        breakdown = stages(config, settings, engine, req)
        year = Request("year", [], timedelta(days=365), NOW, ["html", "json"], "UTC")
        year_s, _ = timed_build(config, settings, engine, year, tmp / "out-year")
        rules = check_rules(config, req.until - 2 * req.period, req.until)
        started = time.perf_counter()
        naive = naive_headline(tmp / "bench.db", sorted(config.campaigns), rules.cap_s,
                               [(a, b) for a, b, _names in rules.maintenance],
                               req.until - req.period, req.until, NOW)
        naive_s = time.perf_counter() - started
        engine.dispose()
    bad = compare(report, naive)
    print(f"report (7 days, {', '.join(req.formats)}, charts), end to end: first run "
          f"{cold:.2f} s (imports included), warm median "
          f"{statistics.median(warm):.2f} s of {len(warm)}; target < {TARGET_S:.0f} s")
    print(f"  warm stages: {breakdown}")
    print(f"naive row-by-row baseline, same run: {naive_s:.2f} s "
          f"({naive_s / cold:.1f}x the report's first run)")
    print(f"report over the whole year (daily aggregates; not a target): {year_s:.2f} s")
    print(f"end: {load()}")
    if cold >= TARGET_S:
        bad.append(f"report took {cold:.2f} s, target < {TARGET_S:.0f} s")
    for line in bad:
        print(f"MISSED: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
