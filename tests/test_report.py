"""Tracking reports from rows we insert, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine as SaEngine

from jobs.report.config import ReportCampaign
from jobs.report.kind import ReportKind, build
from jobs.report.render import render_html
from scheduler.clock import FakeClock
from scheduler.config.checks import ChecksFile
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.settings import Settings
from scheduler.store import pauses
from scheduler.store.runs import Claim, RunRow, claim, get, set_status
from scheduler.store.tables import check_results, deliveries, outbox, tracking_events

REPO = Path(__file__).resolve().parent.parent
UNTIL = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class _Campaign:
    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind


@pytest.fixture
def setup(db: SaEngine, tmp_path: Path) -> tuple[LoadedConfig, Settings, ReportCampaign]:
    templates = tmp_path / "templates"
    templates.mkdir()
    shutil.copy(REPO / "templates" / "email" / "report.html", templates)
    settings = Settings(var_dir=tmp_path / "var", templates_dir=templates,
                        config_dir=tmp_path, database_url="sqlite:///unused.db",
                        _env_file=None)  # type: ignore[call-arg]
    report = ReportCampaign.model_validate({
        "name": "weekly", "kind": "report", "schedule": {"cron": "0 8 * * MON"},
        "period": "7d", "email": ["boss@example.com"]})
    checks = ChecksFile.model_validate({"checks": {
        "website": {"http": {"url": "http://127.0.0.1:9/"}},
        "smtp": {"tcp": {"host": "127.0.0.1", "port": 25}}}})
    config = LoadedConfig(config_dir=tmp_path, checks=checks, campaigns={
        "digest": _Campaign("digest", "newsletter"),
        "posts": _Campaign("posts", "post_reminder"),
        "weekly": report})
    _insert_rows(db)
    return config, settings, report


def _insert_rows(db: SaEngine) -> None:
    with db.begin() as conn:
        def run(campaign: str, at: datetime, status: str, detail: str | None = None) -> int:
            won = claim(conn, [Claim(campaign, campaign, "newsletter", at, at.isoformat(),
                                     status, detail=detail)], "n", at)
            return won[(campaign, at)]

        ok = run("digest", UNTIL - 6 * DAY, "done")
        run("digest", UNTIL - 5 * DAY, "missed", "missed by 5:00:00 (grace 2:00:00)")
        held = run("digest", UNTIL - 4 * DAY, "pending")
        set_status(conn, held, "held", UNTIL, detail="held: paused (guard:website)")
        run("digest", UNTIL - 3 * DAY, "failed", "SMTPServerDisconnected: gone")
        run("digest", UNTIL - 10 * DAY, "done")  # before the period: not counted
        run("posts", UNTIL - 2 * DAY, "skipped", "paused: manual")
        statuses = ["sent"] * 5 + ["failed", "bounced", "bounced", "unknown"]
        conn.execute(sa.insert(deliveries), [
            {"run_id": ok, "recipient": f"r{i}@example.com", "status": s}
            for i, s in enumerate(statuses)])
        events = (["opened"] * 3 + ["clicked"] * 2 + ["unsubscribed", "link_broken"])
        conn.execute(sa.insert(tracking_events), [
            {"at": UNTIL - 5 * DAY, "kind": k, "campaign": "digest"} for k in events])
        conn.execute(sa.insert(tracking_events), [
            {"at": UNTIL - 20 * DAY, "kind": "opened", "campaign": "digest"}])
        pauses.add(conn, "digest", pauses.guard_reason("website"), UNTIL - 4 * DAY,
                   detail="HTTP 503")
        pauses.remove(conn, "digest", pauses.guard_reason("website"), UNTIL - 3 * DAY)
        pauses.add(conn, "posts", pauses.MANUAL, UNTIL - 2 * DAY, detail="launch moved")
        results = ["ok"] * 18 + ["fail"] * 2 + ["unknown"] * 3
        conn.execute(sa.insert(check_results), [
            {"check_name": "website", "at": UNTIL - DAY + timedelta(minutes=i), "outcome": o}
            for i, o in enumerate(results)])


def test_report_counts_and_files(db: SaEngine,
                                 setup: tuple[LoadedConfig, Settings, ReportCampaign]) -> None:
    config, settings, report = setup
    data, paths = build(config, settings, db, report, UNTIL, UNTIL)
    assert [c.name for c in data.campaigns] == ["digest", "posts"]  # reports are not reported
    digest, posts = data.campaigns
    assert digest.runs == {"done": 1, "failed": 1, "missed": 1, "held": 1}
    assert [r["status"] for r in digest.run_reasons] == ["missed", "held", "failed"]
    assert "guard:website" in digest.run_reasons[1]["reason"]
    assert digest.deliveries == {"sent": 5, "failed": 1, "bounced": 2, "unknown": 1}
    assert digest.events == {"opened": 3, "clicked": 2, "unsubscribed": 1, "link_broken": 1,
                             "paused": 1, "resumed": 1}
    assert [p["reason"] for p in digest.pause_reasons] == ["guard:website: HTTP 503"]
    assert posts.runs == {"skipped": 1} and posts.paused_now == ["manual"]
    uptime = {c.name: c.uptime_pct for c in data.checks}
    assert uptime == {"smtp": None, "website": 90.0}

    out = settings.var_dir / "reports" / "weekly"
    assert paths == {fmt: out / f"20261123T080000Z.{fmt}" for fmt in ("html", "csv", "json")}
    as_json = json.loads(paths["json"].read_text())
    assert as_json["campaigns"][0]["deliveries"]["bounced"] == 2
    assert as_json["checks"][1] == {"name": "website", "ok": 18, "fail": 2, "unknown": 3,
                                    "uptime_pct": 90.0}
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert {"section": "deliveries", "name": "digest", "metric": "sent", "value": "5",
            "detail": ""} in rows
    assert any(r["section"] == "check_uptime" and r["value"] == "90.0" for r in rows)
    html = paths["html"].read_text()
    assert "<svg" in html and "<script" not in html
    assert "90.0%" in html and "SMTPServerDisconnected: gone" in html


def test_report_is_emailed_through_the_outbox_once(
        db: SaEngine, setup: tuple[LoadedConfig, Settings, ReportCampaign]) -> None:
    config, settings, report = setup
    build(config, settings, db, report, UNTIL, UNTIL, run_id=7)
    build(config, settings, db, report, UNTIL, UNTIL, run_id=7)  # a re-run: deduplicated
    with db.connect() as conn:
        rows = list(conn.execute(sa.select(outbox)))
    assert len(rows) == 1
    [row] = rows
    assert (row.topic, row.channel, row.target) == ("report", "email", "boss@example.com")
    assert set(row.payload) == {"from", "subject", "text", "html"}
    assert "2026-11-16 to 2026-11-23" in row.payload["subject"]
    assert "website: 90.0%" in row.payload["text"]


def test_html_escapes_content(db: SaEngine,
                              setup: tuple[LoadedConfig, Settings, ReportCampaign]) -> None:
    config, settings, report = setup
    with db.begin() as conn:
        claim(conn, [Claim("digest", "digest", "newsletter", UNTIL - DAY, "x", "failed",
                           detail="<script>alert(1)</script>")], "n", UNTIL)
    data, _ = build(config, settings, db, report, UNTIL, UNTIL)
    html = render_html(data, settings.templates_dir)
    assert "<script>alert" not in html and "&lt;script&gt;" in html


async def test_scheduled_run_covers_period_ending_at_occurrence(
        db: SaEngine, db_url: str,
        setup: tuple[LoadedConfig, Settings, ReportCampaign]) -> None:
    config, settings, report = setup
    clock = FakeClock(UNTIL + timedelta(minutes=45))  # ran late: still the same period
    ctx = ServiceContext(settings, config, db, clock)
    with db.begin() as conn:
        won = claim(conn, [Claim("weekly", "weekly", "report", UNTIL, "slot")], "n", UNTIL)
        run = get(conn, won[("weekly", UNTIL)])
    assert isinstance(run, RunRow)
    result = await ReportKind().execute(ctx, report, run)
    assert result.status == "done"
    assert result.stats["files"][0].endswith("20261123T080000Z.html")
    assert ReportKind().schedules(report, config)[0].key == "weekly"
