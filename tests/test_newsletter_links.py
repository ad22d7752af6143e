"""Every distinct link of a newsletter checked once before its first message, against real
local servers: a broken link pauses the run with ``broken_links`` naming it (nothing sent),
``warn`` sends and reports, the links are the UTM-tagged ones (not the tracked ones), HEAD
falls back to GET, and the reminders' link check is served from the same cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from jobs.newsletter.kind import send_run
from jobs.reminders.links import check_link
from martech.compose import build_registry
from scheduler.cli import make_cli
from scheduler.store import pauses
from scheduler.store.tables import deliveries, tracking_events
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
from tests.site_server import Resource, SiteServer
from tests.smtp_server import SmtpServer

RECIPIENTS = [f"reader{i}@example.com" for i in range(4)]


def html(*urls: str) -> str:
    links = "".join(f'<a href="{u}">link</a> ' for u in urls)
    return (f"<html><body><p>Hello {{{{ first_name }}}}</p>{links}"
            '<a href="{{ unsubscribe_url }}">Unsubscribe</a></body></html>')


@pytest.fixture
async def site() -> AsyncIterator[SiteServer]:
    server = await SiteServer().start()
    for path in ("/deals", "/about"):
        server.add(path, Resource("ok"))
    yield server
    await server.stop()


async def stopped_url() -> str:
    """A URL on a port that was listening a moment ago and is not now."""
    gone = await SiteServer().start()
    await gone.stop()
    return f"{gone.url}/landing"


def statuses(ctx, run_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    with ctx.begin() as conn:
        return sorted({s for (s,) in conn.execute(sa.select(deliveries.c.status).where(
            deliveries.c.run_id == run_id))})


async def test_a_link_to_a_stopped_server_pauses_the_run_naming_it(
        tmp_path: Path, db_url: str, t0: datetime, site: SiteServer) -> None:
    dead = await stopped_url()
    write_config(tmp_path, rows=RECIPIENTS, html=html(f"{site.url}/deals", dead),
                 extra={"check_links": True})
    with SmtpServer() as smtp:
        ctx = context_for(settings_for(tmp_path, db_url, port=smtp.port))
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        assert result.status == "held" and "broken_links" in (result.detail or "")
        assert smtp.received == [] and statuses(ctx, run_id) == ["pending"]
        with ctx.begin() as conn:
            (pause,) = pauses.reasons(conn, "news")
            events = conn.execute(sa.select(tracking_events.c.url, tracking_events.c.detail)
                                  .where(tracking_events.c.kind == "link_broken")).all()
        assert pause.reason == "broken_links"
        assert pause.detail is not None and pause.detail.startswith("1 broken link(s): ")
        assert f"{dead}?utm_source=nl&utm_medium=email&utm_campaign=news" in pause.detail
        assert "deals" not in pause.detail
        assert [e.url.split("?")[0] for e in events] == [dead]
        assert result.stats["links"]["checked"] == 2

        # Someone clears the pause (martech resume-send) without fixing the page: the links
        # are checked again before anything goes out, and the campaign pauses again.
        with ctx.begin() as conn:
            pauses.remove(conn, "news", pauses.BROKEN_LINKS, t0)
        again = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        assert again.status == "held" and smtp.received == []
        with ctx.begin() as conn:
            assert [p.reason for p in pauses.reasons(conn, "news")] == ["broken_links"]
            count = conn.execute(sa.select(sa.func.count()).select_from(tracking_events).where(
                tracking_events.c.kind == "link_broken")).scalar()
        assert count == 1  # one event per link and run, however often it is re-checked
    ctx.db.dispose()


async def test_with_warn_the_run_is_sent_and_the_broken_link_reported(
        tmp_path: Path, db_url: str, t0: datetime, site: SiteServer) -> None:
    dead = await stopped_url()
    write_config(tmp_path, rows=RECIPIENTS, html=html(f"{site.url}/deals", dead),
                 extra={"check_links": True, "on_broken_links": "warn"})
    with SmtpServer() as smtp:
        ctx = context_for(settings_for(tmp_path, db_url, port=smtp.port))
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert result.status == "done"
    assert smtp.per_recipient() == {r: 1 for r in RECIPIENTS}
    links = result.stats["links"]
    assert links["policy"] == "warn" and links["checked"] == 2
    assert [b["url"].split("?")[0] for b in links["broken"]] == [dead]
    with ctx.begin() as conn:
        assert pauses.reasons(conn, "news") == []
        kinds = [k for (k,) in conn.execute(sa.select(tracking_events.c.kind))]
    assert kinds.count("link_broken") == 1
    ctx.db.dispose()


async def test_links_are_checked_once_each_utm_tagged_and_before_tracking(
        tmp_path: Path, db_url: str, t0: datetime, site: SiteServer) -> None:
    site.refuse_head = True  # HEAD answered 405: the checker must ask again with GET
    for i in range(3):
        site.add(f"/u/{i}", Resource("profile"))
    csv_text = "email,first_name,profile\n" + "".join(
        f"{r},N{i},{site.url}/u/{i % 3}\n" for i, r in enumerate(RECIPIENTS * 1))
    page = html(f"{site.url}/deals", f"{site.url}/about").replace(
        "</body>", '<a href="{{ profile }}">profile</a></body>')
    write_config(tmp_path, csv_text=csv_text, html=page, extra={"check_links": True})
    with SmtpServer() as smtp:
        ctx = context_for(settings_for(tmp_path, db_url, port=smtp.port))
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        assert result.status == "done" and len(smtp.received) == len(RECIPIENTS)
        # 2 shared links + 3 distinct per-recipient ones; never the unsubscribe/tracking URLs.
        assert result.stats["links"]["checked"] == 5
        assert {p: n for p, n in site.hits.items()} == {
            "/deals": 2, "/about": 2, "/u/0": 2, "/u/1": 2, "/u/2": 2}  # HEAD 405, then GET
        assert [m for m, p in site.methods if p == "/deals"] == ["HEAD", "GET"]
        # The reminders' link check is served from the same cache: no new request.
        hits = dict(site.hits)
        status = await check_link(ctx, f"{site.url}/deals?utm_source=nl&utm_medium=email"
                                       "&utm_campaign=news")
        assert status.ok and site.hits == hits
    ctx.db.dispose()


async def _invoke(args: list[str], env: dict[str, str]) -> Result:
    main = make_cli(build_registry())
    return await asyncio.to_thread(CliRunner().invoke, main, args, env=env)


async def test_validate_links_and_preview_check_links_show_the_broken_link(
        tmp_path: Path, sqlite_url: str, site: SiteServer) -> None:
    dead = await stopped_url()
    config = write_config(tmp_path, rows=RECIPIENTS, html=html(f"{site.url}/deals", dead))
    env = {"MARTECH_CONFIG_DIR": str(config), "MARTECH_DATABASE_URL": sqlite_url,
           "MARTECH_TEMPLATES_DIR": str(tmp_path / "templates"),
           "MARTECH_VAR_DIR": str(tmp_path / "var")}
    validated = await _invoke(["validate", "--links"], env)
    previewed = await _invoke(["preview", "news", "--check-links"], env)
    assert validated.exit_code == 1, validated.output
    assert f"news.yaml:1: broken link {dead}?utm_source=nl" in validated.output
    assert previewed.exit_code == 1
    assert "BROKEN" in previewed.output and "1 broken link(s)" in previewed.output
    assert (tmp_path / "var" / "previews" / "news").is_dir()  # the preview itself was made

    write_config(tmp_path, rows=RECIPIENTS, html=html(f"{site.url}/deals"))
    fixed = await _invoke(["validate", "--links"], env)
    assert fixed.exit_code == 0, fixed.output
    assert "links: 1 distinct link(s) checked — none broken" in fixed.output
