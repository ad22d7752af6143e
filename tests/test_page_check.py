"""The ``page`` check against real local sites built in each test: every problem is caught
with its number in the message, a good page passes, and findings are stored for reports."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobs.guard.checks.base import CheckResult, run_probe
from jobs.guard.checks.factory import build_probe
from jobs.guard.checks.http import new_session
from jobs.guard.checks.pagefindings import parse_page
from scheduler.clock import SystemClock
from scheduler.config.checks import CheckConfig
from scheduler.sizes import format_size, parse_size
from tests.site_server import CACHED, Resource, SiteServer, good_site, page_html


@pytest.fixture
async def site() -> AsyncIterator[SiteServer]:
    server = await SiteServer().start()
    yield server
    await server.stop()


async def probe(url: str, timeout_s: float = 5.0, **page: Any) -> CheckResult:
    config = CheckConfig.model_validate({"page": {"url": url, **page}})
    session = new_session(10)
    try:
        return await run_probe(build_probe(config, session, SystemClock()), timeout_s)
    finally:
        await session.close()


def codes(result: CheckResult) -> list[str]:
    assert result.findings is not None
    return [p["code"] for p in result.findings["problems"]]


def test_sizes_parse_like_people_write_them() -> None:
    assert parse_size("2MB") == 2_000_000
    assert parse_size("300kB") == 300_000
    assert parse_size("1.5 MB") == 1_500_000
    assert parse_size("512KiB") == 524_288
    assert parse_size(1234) == 1234
    assert format_size(2_345_678) == "2.3 MB" and format_size(850_000) == "850 kB"
    with pytest.raises(ValueError, match="not a size"):
        parse_size("two megs")


def test_html_is_parsed_not_grepped() -> None:
    # An <img> inside a comment or a script string is no image; attributes in any quoting are.
    doc = parse_page("<html><head><TITLE> Hi </TITLE><!-- <img src=/ghost.png> -->"
                     "<script>var s = '<img src=/fake.png>';</script>"
                     "<meta name=VIEWPORT content='width=device-width'></head>"
                     "<body><img src=a.png width=10 height=10><img src='b.png'></body></html>",
                     "http://x.example/dir/page")
    assert doc.title == "Hi" and doc.viewport == "width=device-width"
    assert [(a.url, a.has_dimensions) for a in doc.assets] == [
        ("http://x.example/dir/a.png", True), ("http://x.example/dir/b.png", False)]


async def test_a_good_page_passes_with_its_measurements(site: SiteServer) -> None:
    good_site(site)
    result = await probe(f"{site.url}/bf", max_weight="2MB", max_image="300kB",
                         max_ttfb="2s", require_cache_headers=True)
    assert result.outcome == "ok", result.detail
    assert result.findings is not None
    assert result.findings["problems"] == [] and result.findings["assets_fetched"] == 3
    assert result.findings["largest_images"][0]["url"] == "/hero.jpg"
    assert result.findings["largest_images"][0]["bytes"] == 120_000
    # The weight is what travelled: gzip'ed bodies count compressed.
    assert 120_000 < result.findings["weight_bytes"] < 125_000
    assert "largest image /hero.jpg 120 kB" in result.detail


async def test_a_heavy_page_fails_with_its_weight(site: SiteServer) -> None:
    good_site(site)
    site.add("/hero.jpg", Resource(b"\xff" * 2_600_000, "image/jpeg", headers=CACHED))
    result = await probe(f"{site.url}/bf", max_weight="2MB")
    assert result.outcome == "fail"
    assert codes(result) == ["weight"]
    assert re.search(r"weight 2\.6 MB > max 2\.0 MB \(page \d+ B \+ 3 assets\)", result.detail)


async def test_an_image_over_the_limit_is_named_with_its_size(site: SiteServer) -> None:
    good_site(site)
    site.add("/hero.jpg", Resource(b"\xff" * 450_000, "image/jpeg", headers=CACHED))
    result = await probe(f"{site.url}/bf", max_image="300kB")
    assert codes(result) == ["image_size"]
    assert "image /hero.jpg 450 kB > max 300 kB" in result.detail


async def test_an_uncompressed_script_is_caught_with_its_size(site: SiteServer) -> None:
    good_site(site)
    site.add("/app.js", Resource("console.log(1);" * 300, "application/javascript",
                                 headers=CACHED))
    result = await probe(f"{site.url}/bf")
    assert codes(result) == ["compression"]
    assert "script /app.js 4.5 kB sent uncompressed (no gzip/br)" in result.detail


async def test_an_image_without_dimensions_is_named(site: SiteServer) -> None:
    good_site(site)
    site.add("/bf", Resource(page_html(body='<img src="/hero.jpg" width="800" height="400">'
                                            '<img src="/logo.png" alt="logo">'), gzip=True))
    site.add("/logo.png", Resource(b"\x89PNG" * 100, "image/png", headers=CACHED))
    result = await probe(f"{site.url}/bf")
    assert codes(result) == ["image_dimensions"]
    assert "1 image(s) without width/height: /logo.png" in result.detail


async def test_a_missing_viewport_title_and_description_fail(site: SiteServer) -> None:
    site.add("/bf", Resource(page_html(viewport=False, title=None, description=False)))
    result = await probe(f"{site.url}/bf")
    assert codes(result) == ["viewport", "title", "description"]
    assert result.detail.startswith("3 problem(s): no <meta name=\"viewport\">")
    # Requirements can be relaxed: then they are notes, and the page passes.
    relaxed = await probe(f"{site.url}/bf", require_viewport=False, require_title=False,
                          require_description=False)
    assert relaxed.outcome == "ok" and relaxed.findings is not None
    assert [n["code"] for n in relaxed.findings["notes"]] == ["viewport", "title", "description"]


async def test_a_slow_first_byte_is_caught_with_the_time(site: SiteServer) -> None:
    site.add("/bf", Resource(page_html(), delay_s=0.4))  # the server waits before answering
    result = await probe(f"{site.url}/bf", max_ttfb="150ms")
    assert codes(result) == ["ttfb"]
    found = re.search(r"TTFB (\d+) ms > max 150 ms", result.detail)
    assert found and 400 <= int(found.group(1)) < 2000


async def test_a_broken_asset_is_caught_with_its_status(site: SiteServer) -> None:
    good_site(site)
    site.add("/bf", Resource(page_html(body='<link rel="stylesheet" href="/missing.css">'
                                            '<script src="/app.js"></script>'), gzip=True))
    site.add("/gone.png", Resource("gone", status=500))
    result = await probe(f"{site.url}/bf")
    assert codes(result) == ["broken_asset"]
    assert "style /missing.css: HTTP 404" in result.detail


async def test_only_own_origin_and_listed_cdns_are_fetched(site: SiteServer) -> None:
    cdn = await SiteServer().start()
    try:
        cdn.add("/lib.js", Resource("x" * 100, "application/javascript", headers=CACHED))
        site.add("/bf", Resource(page_html(body=(
            f'<script src="http://localhost:{cdn.port}/lib.js"></script>'
            '<script src="http://third-party.example/track.js"></script>'))))
        result = await probe(f"{site.url}/bf", cdns=["localhost"])
    finally:
        await cdn.stop()
    assert result.outcome == "ok", result.detail
    assert cdn.hits == {"/lib.js": 1}
    assert result.findings is not None
    assert result.findings["assets_fetched"] == 1 and result.findings["assets_third_party"] == 1


async def test_assets_beyond_the_budget_fail_the_check(site: SiteServer) -> None:
    body = "".join(f'<img src="/slow{i}.jpg" width="1" height="1">' for i in range(12))
    site.add("/bf", Resource(page_html(body=body)))
    for i in range(12):
        site.add(f"/slow{i}.jpg", Resource(b"\xff", "image/jpeg", delay_s=0.5, headers=CACHED))
    result = await probe(f"{site.url}/bf", timeout_s=0.8, asset_timeout="5s")
    assert result.outcome == "fail"
    assert "budget" in codes(result) or "broken_asset" in codes(result)
    assert re.search(r"(\d+ asset\(s\) not fetched within the 0\.8 s budget|timed out)",
                     result.detail)


async def test_a_page_that_does_not_answer_fails_plainly(site: SiteServer) -> None:
    result = await probe(f"{site.url}/nowhere")
    assert result.outcome == "fail" and result.detail == "page: status 404, expected 200"
