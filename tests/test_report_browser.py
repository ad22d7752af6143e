"""The HTML report and the dashboard in a real browser (Debian's chromium driven by the
playwright package), and the dashboard's authentication."""

from __future__ import annotations

import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import async_playwright
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from jobs.report.produce import build
from martech.compose import build_registry
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.http_app import build_app
from tests.report_fixtures import UNTIL, fill, make_setup, request

# Debian's chromium (playwright's own browser download is not possible here).
CHROMIUM = shutil.which("chromium")
TOKEN = "s3cret-dashboard-token"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture
async def served(db: Engine, tmp_path: Path) -> AsyncIterator[tuple[str, ServiceContext]]:
    fill(db)
    config, settings, report = make_setup(tmp_path)
    settings = settings.model_copy(update={"dashboard_token": SecretStr(TOKEN)})
    ctx = ServiceContext(settings, config, db, FakeClock(UNTIL))
    build(config, settings, db, request(report, settings), UNTIL)
    registry = build_registry()
    for kind in ("newsletter", "post_reminder"):  # the fixture has plain stand-ins
        registry.kinds.pop(kind, None)
    runner = web.AppRunner(build_app(ctx, registry.http_routes))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", ctx
    finally:
        await runner.cleanup()


async def test_dashboard_and_reports_need_the_token(
        served: tuple[str, ServiceContext]) -> None:
    url, _ctx = served
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/reports/", "/reports/weekly/latest.html", "/reports/weekly/live"):
            async with session.get(url + path) as resp:
                assert resp.status == 401, path
                assert resp.headers["WWW-Authenticate"].startswith("Basic")
            async with session.get(url + path, headers=_basic("x", "wrong")) as resp:
                assert resp.status == 401, path
        async with session.get(url + "/", headers=_basic("any", TOKEN)) as resp:
            assert resp.status == 200 and "Campaigns" in await resp.text()
        async with session.get(url + "/reports/",
                               headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200 and "weekly" in await resp.text()
        async with session.get(url + "/reports/weekly/..%2F..%2Fsecret.html",
                               headers=_basic("any", TOKEN)) as resp:
            assert resp.status == 404
        async with session.get(url + "/healthz") as resp:  # public endpoints stay public
            assert resp.status != 401
        async with session.get(url + "/o/forged.gif") as resp:
            assert resp.status == 400


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(apt-get install chromium; .ci/run installs it when missing)")
async def test_report_and_dashboard_in_a_real_browser(
        served: tuple[str, ServiceContext], tmp_path: Path) -> None:
    assert CHROMIUM is not None
    url, _ctx = served
    profile = tmp_path / "profile"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=ARGS, headless=True,
            http_credentials={"username": "martech", "password": TOKEN},
            viewport={"width": 390, "height": 844})  # a phone
        try:
            page = await browser.new_page()
            resp = await page.goto(url + "/")
            assert resp is not None and resp.status == 200
            await _charts_drawn(page)
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            await page.click("a.report-link")
            await page.wait_for_load_state("load")
            assert page.url.endswith("/reports/weekly/live")
            assert await page.locator("#h-uptime .value").inner_text() == "85.8%"
            await _charts_drawn(page, at_least=2)
            await page.click('a[href="#c-digest"]')
            await page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            stored = await page.goto(url + "/reports/weekly/latest.html")
            assert stored is not None and stored.status == 200
            await _charts_drawn(page, at_least=2)
            await page.set_viewport_size({"width": 1100, "height": 900})
            await page.screenshot(path=str(tmp_path / "report-wide.png"), full_page=True)
        finally:
            await browser.close()
    for name in ("dashboard.png", "report.png", "report-wide.png"):
        assert (tmp_path / name).stat().st_size > 10_000


async def _charts_drawn(page: object, at_least: int = 1) -> None:
    sizes = await page.eval_on_selector_all(  # type: ignore[attr-defined]
        "img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert len(sizes) >= at_least
    assert all(done and w > 0 and h > 0 for done, w, h in sizes), sizes
