"""A database filled with known events, and the config the report reads it with."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.newsletter.http_tracking import Signals, record_click, record_open
from jobs.report.config import ReportCampaign
from jobs.report.produce import Request
from scheduler.config.checks import ChecksFile
from scheduler.config.loader import LoadedConfig
from scheduler.settings import Settings
from scheduler.store import pauses
from scheduler.store.runs import Claim, claim, set_status
from scheduler.store.tables import (
    check_results,
    deliveries,
    incidents,
    posts_done,
    runs,
    tracking_events,
)

REPO = Path(__file__).resolve().parent.parent
UNTIL = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=7)
NIGHT = datetime(2026, 11, 20, 20, 0, tzinfo=UTC)  # 20:00 ok, 21:00 down, 22:00 maintenance
HUMAN_UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Version/17.0"
URL1, URL2 = "https://acme.example/a", "https://acme.example/b"


class Campaign:
    def __init__(self, name: str, kind: str, requires: list[str] | None = None) -> None:
        self.name, self.kind, self.requires = name, kind, requires or []
        self.tags: list[str] = []
        self.enabled = True

    def schedule_text(self) -> str:
        return "by hand"


def make_setup(tmp_path: Path) -> tuple[LoadedConfig, Settings, ReportCampaign]:
    templates = tmp_path / "templates"
    templates.mkdir(exist_ok=True)
    shutil.copy(REPO / "templates" / "email" / "report.html", templates)
    settings = Settings(var_dir=tmp_path / "var", templates_dir=templates, config_dir=tmp_path,
                        database_url="sqlite:///unused.db", report_timezone="Europe/Berlin",
                        _env_file=None)  # type: ignore[call-arg]
    report = ReportCampaign.model_validate({
        "name": "weekly", "kind": "report", "schedule": {"cron": "0 8 * * MON"},
        "period": "7d", "email": ["boss@example.com"]})
    checks = ChecksFile.model_validate({
        "checks": {"website": {"http": {"url": "http://127.0.0.1:9/"}, "interval": "60s"},
                   "smtp": {"tcp": {"host": "127.0.0.1", "port": 25}}},
        "maintenance": [{"name": "db", "start": "2026-11-20 22:00", "duration": "2h",
                         "pauses": "all"}]})
    config = LoadedConfig(config_dir=tmp_path, checks=checks, campaigns={
        "digest": Campaign("digest", "newsletter", ["website"]),
        "posts": Campaign("posts", "post_reminder"), "weekly": report})
    return config, settings, report


def request(report: ReportCampaign, settings: Settings, **kw: Any) -> Request:
    return Request.of(report, settings, UNTIL)


def _run(conn: sa.Connection, campaign: str, kind: str, at: datetime, status: str,
         key: str | None = None, **values: Any) -> int:
    won = claim(conn, [Claim(key or campaign, campaign, kind, at, key or at.isoformat(),
                             "pending")], "n", at)
    run_id = won[(key or campaign, at)]
    set_status(conn, run_id, status, at, detail=values.pop("detail", None))
    if values:
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(**values))
    return run_id


def _deliveries(conn: sa.Connection, run_id: int,
                rows: Sequence[tuple[str, datetime | None, str | None]]) -> list[int]:
    ids = []
    for i, (status, sent_at, error) in enumerate(rows):
        ids.append(int(conn.execute(sa.insert(deliveries).values(
            run_id=run_id, recipient=f"r{run_id}-{i}@example.com", status=status,
            sent_at=sent_at, last_error=error).returning(deliveries.c.id)).scalar_one()))
    return ids


def fill(db: Engine) -> None:
    """The known events; the expected figures are in tests/test_report.py."""
    with db.begin() as conn:
        _campaign_rows(conn)
        _check_rows(conn)
        _post_rows(conn)


def _campaign_rows(conn: sa.Connection) -> None:
    a_at = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
    run_a = _run(conn, "digest", "newsletter", a_at, "done", started_at=a_at,
                 finished_at=a_at + timedelta(minutes=10))
    sent = a_at + timedelta(minutes=5)
    ids = _deliveries(conn, run_a, [("sent", sent, None)] * 6 + [
        ("failed", None, "550"), ("bounced", None, "550 no"), ("unknown", None, None),
        ("skipped", None, "suppressed")])
    hour = timedelta(hours=1)
    # d0: a person opens (twice: one open) and clicks URL1 twice.
    record_open(conn, ids[0], sent + hour, Signals("198.51.100.7", HUMAN_UA))
    record_open(conn, ids[0], sent + 2 * hour, Signals("198.51.100.7", HUMAN_UA))
    record_click(conn, ids[0], URL1, sent + hour, Signals("198.51.100.7", HUMAN_UA))
    record_click(conn, ids[0], URL1, sent + 2 * hour, Signals("198.51.100.7", HUMAN_UA))
    # d1: Apple's privacy proxy prefetches within a second (machine wins over suspect);
    # the person opens later.
    record_open(conn, ids[1], sent + timedelta(seconds=1), Signals("17.58.10.1", "Mozilla/5.0"))
    record_open(conn, ids[1], sent + 3 * hour, Signals("198.51.100.8", HUMAN_UA))
    # d2: an open 1 s after delivery (suspect); SafeLinks follows URL2.
    record_open(conn, ids[2], sent + timedelta(seconds=1), Signals("203.0.113.5", HUMAN_UA))
    record_click(conn, ids[2], URL2, sent + timedelta(seconds=3), Signals("40.92.1.1", "x"))
    # d3: a person clicks URL2 without loading images; Google's proxy opens d4.
    record_click(conn, ids[3], URL2, sent + hour, Signals("198.51.100.9", HUMAN_UA))
    record_open(conn, ids[4], sent + hour, Signals(
        "66.249.84.1", "Mozilla/5.0 (Windows NT 5.1) (via ggpht.com GoogleImageProxy)"))
    conn.execute(sa.insert(tracking_events).values(
        at=a_at + timedelta(days=1), kind="unsubscribed", campaign="digest",
        recipient=f"r{run_a}-0@example.com"))
    # Run B is caught by the incident at 21:00: two sends before it, two held till after.
    b_at = NIGHT + timedelta(minutes=55)
    run_b = _run(conn, "digest", "newsletter", b_at, "done", started_at=b_at,
                 finished_at=NIGHT + timedelta(minutes=100))
    _deliveries(conn, run_b, [("sent", NIGHT + timedelta(minutes=58), None)] * 2
                + [("sent", NIGHT + timedelta(minutes=95), None)] * 2)
    _run(conn, "digest", "newsletter", NIGHT + timedelta(minutes=70), "held",
         detail="held: paused (guard:website)")
    pauses.add(conn, "digest", pauses.guard_reason("website"), NIGHT + hour, detail="HTTP 503")
    pauses.remove(conn, "digest", pauses.guard_reason("website"), NIGHT + 90 * timedelta(minutes=1))
    pauses.add(conn, "digest", pauses.maintenance_reason("db"), NIGHT + 2 * hour)
    pauses.remove(conn, "digest", pauses.maintenance_reason("db"), NIGHT + 4 * hour)
    conn.execute(sa.insert(incidents).values(
        check_name="website", started_at=NIGHT + hour, ended_at=NIGHT + 90 * timedelta(
            minutes=1), detail="HTTP 503", campaigns=["digest"]))
    # The previous period: one run of 5, one human open.
    p_at = a_at - timedelta(days=7)
    run_p = _run(conn, "digest", "newsletter", p_at, "done", started_at=p_at,
                 finished_at=p_at + timedelta(minutes=20))
    prev = _deliveries(conn, run_p, [("sent", p_at, None)] * 5)
    record_open(conn, prev[0], p_at + hour, Signals("198.51.100.7", HUMAN_UA))
    # A click in the previous period: not one of this period's top links.
    record_click(conn, prev[0], URL1, p_at + hour, Signals("198.51.100.7", HUMAN_UA))


def _check_rows(conn: sa.Connection) -> None:
    rows: list[dict[str, Any]] = []

    def add(start: datetime, minutes: int, every_s: int, outcome: str) -> None:
        for i in range(minutes * 60 // every_s):
            rows.append({"check_name": "website", "at": start + timedelta(seconds=i * every_s),
                         "outcome": outcome, "latency_ms": 100.0 if outcome == "ok" else None})

    hour = timedelta(hours=1)
    add(NIGHT, 60, 60, "ok")
    add(NIGHT + hour, 30, 10, "fail")  # faster re-checks while down: time-weighted anyway
    add(NIGHT + 1.5 * hour, 30, 60, "ok")
    add(NIGHT + 2 * hour, 120, 60, "fail")  # inside the maintenance window
    add(NIGHT + 4 * hour, 30, 60, "unknown")  # the guard could not see
    add(NIGHT + 4.5 * hour, 90, 60, "ok")
    conn.execute(sa.insert(check_results), rows)


def _post_rows(conn: sa.Connection) -> None:
    due = datetime(2026, 11, 19, 10, 0, tzinfo=UTC)
    sent = _run(conn, "posts", "post_reminder", due - timedelta(hours=1), "done",
                key="posts/launch/1h", stats={"post_id": "launch"})
    _run(conn, "posts", "post_reminder", due - timedelta(days=1), "held",
         key="posts/launch/1d", detail="held: paused (manual)")
    conn.execute(sa.insert(tracking_events).values(
        at=due - timedelta(hours=1), kind="link_broken", campaign="posts", run_id=sent,
        url="https://acme.example/bf", detail="launch: HTTP 404"))
    conn.execute(sa.insert(posts_done).values(campaign="posts", post_id="launch",
                                              done_at=due + timedelta(minutes=5)))
