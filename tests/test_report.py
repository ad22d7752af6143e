"""Report figures against a database filled with known events (tests/report_fixtures.py),
on SQLite and PostgreSQL; the outputs agree with each other; rollups change nothing."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.report.config import ReportCampaign
from jobs.report.model import Report
from jobs.report.produce import Request, build, produce
from jobs.report.retention import Ages, catch_up, rules_of
from jobs.report.tiers import DAY, HOUR, Cursors, plan
from scheduler.config.loader import LoadedConfig
from scheduler.delivery.notify import build_notification
from scheduler.outbox import _images
from scheduler.settings import Settings
from scheduler.store.tables import check_results, outbox, tracking_events
from tests.conftest import REPO
from tests.report_fixtures import SINCE, UNTIL, URL1, URL2, fill, make_setup, request

Setup = tuple[LoadedConfig, Settings, ReportCampaign]
OK_S = 3600 + 1800 + 89 * 60 + 125  # the last result counts until its cap (2 x 60 s + 5 s)


@pytest.fixture
def setup(db: Engine, tmp_path: Path) -> Setup:
    fill(db)
    return make_setup(tmp_path)


def _report(db: Engine, setup: Setup) -> Report:
    config, settings, report = setup
    return produce(config, db, request(report, settings), UNTIL)


def test_figures_table(db: Engine, setup: Setup) -> None:
    r = _report(db, setup)
    assert [c.name for c in r.campaigns] == ["digest", "posts"]  # reports are not reported
    digest = r.campaigns[0]
    f, p = digest.figures, digest.previous
    assert p is not None
    expected = {
        "audience": (f.audience, 14), "sent": (f.sent, 13), "delivered": (f.delivered, 10),
        "failed": (f.failed, 1), "bounced": (f.bounced, 1), "unknown": (f.unknown, 1),
        "suppressed": (f.suppressed, 1),
        "human opens": (f.opens.get("human"), 2), "machine opens": (f.opens.get("machine"), 2),
        "suspect opens": (f.opens.get("suspect"), 1),
        "human clicks": (f.clicks.get("human"), 2), "machine clicks": (f.clicks.get("machine"), 1),
        "human click events": (f.click_events.get("human"), 3),
        "open rate": (f.open_rate, 20.0), "click rate": (f.click_rate, 20.0),
        "click-to-open": (f.click_to_open_rate, 100.0),
        "unsubscribes": (f.unsubscribes, 1), "unsubscribe rate": (f.unsubscribe_rate, 10.0),
        "send duration": (f.send_duration_s, 600 + 2700),
        "previous sent": (p.sent, 5), "previous open rate": (p.open_rate, 20.0),
        "sent change %": (digest.change["sent"], 160.0),
        "paused by guard": (digest.paused_s.get("guard:website"), 1800.0),
        "paused by maintenance": (digest.paused_s.get("maintenance:db"), 7200.0),
    }
    assert {k: v[0] for k, v in expected.items()} == {k: v[1] for k, v in expected.items()}
    assert digest.top_links == [
        {"url": URL1, "human": 2, "machine": 0, "suspect": 0},
        {"url": URL2, "human": 1, "machine": 1, "suspect": 0}]
    assert [(n["status"], n["reason"]) for n in digest.not_sent_runs] == [
        ("held", "held: paused (guard:website)")]
    run_a = digest.runs[0]
    assert (run_a.figures.sent, run_a.figures.opens, run_a.change["open_rate"]) == (
        9, {"human": 2, "machine": 2, "suspect": 1}, 66.6)  # 33.33% after the previous 20%
    assert r.agents == {"apple_mpp": {"opened": 1}, "fast": {"opened": 1},
                        "google_proxy": {"opened": 1}, "safelinks": {"clicked": 1}}

    website = {c.name: c for c in r.checks}["website"]
    assert website.seconds == {"ok": OK_S, "fail": 1800.0, "unknown": 1800.0,
                               "maintenance": 7200.0,
                               "no_data": 7 * 86400 - OK_S - 1800 - 1800 - 7200}
    assert website.uptime_pct == round(100 * OK_S / (OK_S + 1800), 3) == 85.788
    assert (website.results, website.failures) == (510, 300)
    assert website.p50_ms is not None and 100 <= website.p50_ms <= 110
    [incident] = website.incidents
    assert (incident.duration_s, incident.campaigns, incident.held_sends,
            incident.held_runs) == (1800.0, ["digest"], 2, 1)
    assert {c.name: c.uptime_pct for c in r.checks}["smtp"] is None

    [post] = r.posts
    assert (post.post_id, post.reminders_sent, len(post.held), post.broken_links,
            post.on_time) == ("launch", 1, 1, ["https://acme.example/bf"], True)
    heads = {h.name: (h.value, h.previous, h.change) for h in r.headline}
    assert heads["sent"] == (13, 5, 160.0)
    assert heads["open_rate"] == (20.0, 20.0, 0.0)
    assert heads["uptime"][0] == 85.788
    assert heads["incidents"][0] == 1 and heads["held_sends"][0] == 2


def test_rollup_and_pruning_change_no_figure(db: Engine, setup: Setup) -> None:
    before = _report(db, setup).to_json()
    config, _settings, _report_cfg = setup
    catch_up(db, rules_of(config), UNTIL, Ages(raw=timedelta(hours=1), hourly=timedelta(days=1)))
    with db.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(check_results)).scalar()
        opens = conn.execute(sa.select(sa.func.count()).where(
            tracking_events.c.kind == "opened")).scalar()
    assert left == 0 and opens == 0  # raw rows gone: the figures now come from aggregates
    after = _report(db, setup).to_json()
    for key in ("headline", "checks", "posts"):
        assert after[key] == before[key], key
    for a, b in zip(after["campaigns"], before["campaigns"], strict=True):
        assert a["figures"] == b["figures"] and a["top_links"] == b["top_links"]
    assert after["machine_agents"] == before["machine_agents"] != {}  # kept in aggregates


def test_a_short_report_rolls_up_with_every_maintenance_window(db: Engine, setup: Setup
                                                               ) -> None:
    # A report rolls up every complete hour before now, not only its own period's: each
    # chunk must be rolled up with that chunk's maintenance windows (here 20 Nov, 22:00-24:00).
    config, _settings, _report_cfg = setup
    short = Request("short", [], timedelta(hours=1), SINCE + timedelta(hours=1), ["json"], "UTC")
    produce(config, db, short, UNTIL)
    website = {c.name: c for c in _report(db, setup).checks}["website"]
    assert (website.seconds["maintenance"], website.seconds["fail"]) == (7200.0, 1800.0)


def test_outputs_agree(db: Engine, setup: Setup) -> None:
    config, settings, report = setup
    r, paths = build(config, settings, db, request(report, settings), UNTIL)
    out = settings.var_dir / "reports" / "weekly"
    assert paths == {fmt: out / f"20261123T080000Z.{fmt}" for fmt in ("html", "csv", "json")}
    assert (out / "latest.html").read_text() == paths["html"].read_text()
    as_json = json.loads(paths["json"].read_text())
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    html = paths["html"].read_text()
    assert as_json["schema"] == 1 and as_json["timezone"] == "Europe/Berlin"
    for head in as_json["headline"]:
        [row] = [x for x in rows if x["section"] == "headline" and x["metric"] == head["name"]
                 and x["period"] == "current"]
        assert float(row["value"]) == head["value"]
    digest = as_json["campaigns"][0]
    csv_digest = {x["metric"]: x["value"] for x in rows
                  if x["section"] == "campaign" and x["name"] == "digest"
                  and x["period"] == "current"}
    assert int(csv_digest["delivered"]) == digest["figures"]["delivered"] == 10
    assert int(csv_digest["opens.machine"]) == digest["figures"]["opens"]["machine"] == 2
    check = {x["metric"]: x["value"] for x in rows if x["section"] == "check"
             and x["name"] == "website" and x["period"] == "current"}
    assert float(check["uptime_pct"]) == as_json["checks"][1]["uptime_pct"] == 85.788
    tile = re.search(r'id="h-uptime">.*?class="value">([^<]+)<', html, re.S)
    assert tile is not None and tile.group(1) == "85.8%"
    assert re.search(r'id="h-sent">.*?class="value">13<', html, re.S)
    assert 'href="#c-digest"' in html and 'id="c-digest"' in html
    assert "Fri 20 Nov, 22:00" in html  # the incident at 21:00 UTC, in Berlin time
    assert "r1-0@example.com" not in html + paths["json"].read_text() + paths["csv"].read_text()
    assert "<svg" not in html and "<script" not in html
    assert html.count('src="data:image/png;base64,') == len(r.checks and ["j", "u"])


def test_email_is_multipart_related_with_every_cid(db: Engine, setup: Setup) -> None:
    config, settings, report = setup
    build(config, settings, db, request(report, settings), UNTIL, run_id=7)
    build(config, settings, db, request(report, settings), UNTIL, run_id=7)  # deduplicated
    with db.connect() as conn:
        [row] = list(conn.execute(sa.select(outbox)))
    payload = row.payload
    message = build_notification(from_=payload["from"], to=row.target,
                                 subject=payload["subject"], text=payload["text"],
                                 html=payload["html"], images=_images(payload))
    parsed = message_from_bytes(message.data, policy=policy.default)
    related = [p for p in parsed.walk() if p.get_content_type() == "multipart/related"]
    assert len(related) == 1
    html_part = next(p for p in parsed.walk() if p.get_content_type() == "text/html")
    cids = set(re.findall(r'src="cid:([^"]+)"', html_part.get_content()))
    assert cids == {"joined@report.martech", "uptime@report.martech"}
    attached = {p["Content-ID"].strip("<>"): p.get_content() for p in related[0].iter_parts()
                if p.get_content_type() == "image/png"}
    assert set(attached) == cids
    assert all(png.startswith(b"\x89PNG") for png in attached.values())
    assert "data:image" not in html_part.get_content()


def test_the_cli_starts_without_matplotlib() -> None:
    # Every martech command builds the whole registry; matplotlib and numpy would add 0.5-1.3 s
    # to each, enough for `martech send --now` to finish before a `martech pause` lands.
    probe = ("import sys; import martech.cli; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plan_reads_whole_days_from_the_daily_tier() -> None:
    t0, m = datetime(2026, 1, 1, tzinfo=UTC), timedelta(minutes=1)
    cur = Cursors(rolled=t0 + 300 * DAY + 5 * HOUR, daily=t0 + 300 * DAY)
    segments = plan(t0 + 10 * DAY + 90 * m, t0 + 300 * DAY + 5 * HOUR + 20 * m, cur)
    assert [(s.tier, s.start - t0, s.end - t0) for s in segments] == [
        ("raw", 10 * DAY + 90 * m, 10 * DAY + 2 * HOUR),  # the partial hour, raw
        ("hour", 10 * DAY + 2 * HOUR, 11 * DAY),  # the rest of the partial day, by hour
        ("day", 11 * DAY, 300 * DAY),  # 289 whole days, one row each
        ("hour", 300 * DAY, 300 * DAY + 5 * HOUR),  # not summed into a day yet
        ("raw", 300 * DAY + 5 * HOUR, 300 * DAY + 5 * HOUR + 20 * m)]  # not rolled up yet
    # Hourly rows pruned before day 20: the edge day is read whole from the daily tier.
    pruned = Cursors(rolled=cur.rolled, daily=cur.daily, raw_pruned=t0 + 30 * DAY,
                     hour_pruned=t0 + 20 * DAY)
    assert [(s.tier, s.start - t0, s.end - t0) for s in plan(
        t0 + 10 * DAY + 90 * m, t0 + 40 * DAY, pruned)] == [
        ("day", 10 * DAY, 20 * DAY), ("day", 20 * DAY, 40 * DAY)]
