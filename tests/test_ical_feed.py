"""The content calendar as an iCalendar feed: served by the HTTP app under a secret token
(a wrong one, or none configured, is a 404), written by ``martech calendar --ics``, parsed back
with the ``icalendar`` library; each event falls at its post's time in the campaign's zone,
across the spring DST change, with the copy, link, reminders and whether it was posted."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from click.testing import CliRunner
from freezegun import freeze_time
from icalendar import Calendar

from jobs.reminders.cli import mark_posted
from martech.compose import build_registry, load_config
from scheduler.cli import make_cli
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.http_app import run_http_app
from scheduler.settings import Settings
from scheduler.store.db import make_engine
from tests.conftest import REPO

TOKEN = "s3cret-calendar-token"
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
CAMPAIGN = textwrap.dedent("""
    name: spring-posts
    kind: post_reminder
    timezone: Europe/Berlin
    remind_before: [1d, 1h]
    notify: [{email: social@acme.example}]
    posts:
      - {id: before-dst, at: "2026-03-28 10:00", network: linkedin,
         copy: "Spring sale starts tomorrow: {{ link }}", link: "https://acme.example/spring"}
      - {id: dst-day, at: "2026-03-29 10:00", network: [x, linkedin],
         copy: {x: "Spring sale is live {{ link }}",
                linkedin: "Our spring sale is live: {{ link }}"},
         link: "https://acme.example/spring"}
""")


def write_config(root: Path) -> Path:
    cfg = root / "config"
    (cfg / "campaigns").mkdir(parents=True)
    (cfg / "campaigns" / "spring-posts.yaml").write_text(CAMPAIGN)
    return cfg


def events(data: bytes) -> dict[str, Any]:
    cal = Calendar.from_ical(data)
    return {str(e["uid"]): e for e in cal.walk("VEVENT")}


async def test_feed_under_its_token_parses_and_falls_at_the_posts_times(
        tmp_path: Path, db_url: str) -> None:
    cfg = write_config(tmp_path)
    settings = Settings(database_url=db_url, config_dir=cfg, var_dir=tmp_path / "var",
                        templates_dir=REPO / "templates" / "email", http_port=0,
                        calendar_token=TOKEN, _env_file=None)  # type: ignore[call-arg]
    ctx = ServiceContext(settings, load_config(cfg), make_engine(db_url), FakeClock(NOW))
    # One post is already done.
    mark_posted(ctx.db, ctx.config, "spring-posts", post_id="before-dst", clock=ctx.clock)
    server = asyncio.create_task(run_http_app(ctx, build_registry().http_routes))
    try:
        for _ in range(400):
            if "http_port" in ctx.extras:
                break
            await asyncio.sleep(0.005)
        base = f"http://127.0.0.1:{ctx.extras['http_port']}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/calendar/{TOKEN}.ics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/calendar")
                body = await resp.read()
            for wrong in ("nope", TOKEN[:-1], TOKEN + "x"):
                async with session.get(f"{base}/calendar/{wrong}.ics") as resp:
                    assert resp.status == 404
    finally:
        ctx.stopping.set()
        await server
        ctx.db.dispose()

    cal = Calendar.from_ical(body)
    assert [str(tz["tzid"]) for tz in cal.walk("VTIMEZONE")] == ["Europe/Berlin"]
    found = events(body)
    assert set(found) == {"spring-posts/before-dst@martech", "spring-posts/dst-day@martech"}
    before, dst = found["spring-posts/before-dst@martech"], found["spring-posts/dst-day@martech"]
    # 10:00 in Berlin: CET (UTC+1) on the 28th, CEST (UTC+2) from the 29th.
    assert before["dtstart"].dt.astimezone(UTC) == datetime(2026, 3, 28, 9, 0, tzinfo=UTC)
    assert dst["dtstart"].dt.astimezone(UTC) == datetime(2026, 3, 29, 8, 0, tzinfo=UTC)
    assert str(dst["dtstart"].params["TZID"]) == "Europe/Berlin"
    assert dst["dtstart"].dt.hour == 10 and before["dtstart"].dt.hour == 10
    # The copy per network, the UTM-tagged link, the reminders, posted or not.
    text = str(dst["description"])
    assert "X:\nSpring sale is live https://acme.example/spring?utm_source=x" in text
    assert "LinkedIn:\nOur spring sale is live https" not in text  # each its own copy
    assert "Our spring sale is live: https://acme.example/spring?utm_source=linkedin" in text
    assert ("Reminders: 1d before (Sat 2026-03-28 09:00 CET), "  # 24 h before, across DST
            "1h before (Sun 2026-03-29 09:00 CEST)") in text
    assert "Not posted yet" in text and str(dst["x-martech-posted"]) == "FALSE"
    alarms = [a for a in dst.walk("VALARM")]
    assert sorted(a["trigger"].dt for a in alarms) == [-timedelta(days=1), -timedelta(hours=1)]
    assert str(before["summary"]).startswith("✓ ") and str(before["x-martech-posted"]) == "TRUE"
    assert "Posted: " in str(before["description"]) and before.walk("VALARM") == []
    assert str(dst["url"]).startswith("https://acme.example/spring?utm_source=x")


async def test_no_token_configured_means_no_feed(tmp_path: Path, sqlite_url: str) -> None:
    cfg = write_config(tmp_path)
    settings = Settings(database_url=sqlite_url, config_dir=cfg, var_dir=tmp_path / "var",
                        http_port=0, _env_file=None)  # type: ignore[call-arg]
    engine = make_engine(sqlite_url)
    ctx = ServiceContext(settings, load_config(cfg), engine, FakeClock(NOW))
    server = asyncio.create_task(run_http_app(ctx, build_registry().http_routes))
    try:
        for _ in range(400):
            if "http_port" in ctx.extras:
                break
            await asyncio.sleep(0.005)
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{ctx.extras['http_port']}/calendar/.ics") as resp:
            assert resp.status == 404
    finally:
        ctx.stopping.set()
        await server
        engine.dispose()


def test_martech_calendar_writes_the_same_feed_to_a_file(tmp_path: Path, sqlite_url: str
                                                         ) -> None:
    cfg = write_config(tmp_path)
    out = tmp_path / "posts.ics"
    env = {"MARTECH_CONFIG_DIR": str(cfg), "MARTECH_DATABASE_URL": sqlite_url,
           "MARTECH_TEMPLATES_DIR": str(REPO / "templates" / "email")}
    with freeze_time(NOW):
        result = CliRunner().invoke(make_cli(build_registry()),
                                    ["calendar", "--ics", str(out), "--days", "30"], env=env)
    assert result.exit_code == 0, result.output
    assert "wrote 2 post(s) to" in result.output
    found = events(out.read_bytes())
    dst = found["spring-posts/dst-day@martech"]
    assert dst["dtstart"].dt.astimezone(UTC) == datetime(2026, 3, 29, 8, 0, tzinfo=UTC)
