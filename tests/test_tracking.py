"""Click and open tracking end to end: aiosmtpd, the real HTTP app, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.newsletter.kind import send_run
from jobs.newsletter.tracking import LinkTracker
from jobs.report.data import gather
from martech.compose import build_registry, load_config
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.delivery.tokens import (
    CLICK,
    Signer,
    b64decode_strict,
    b64encode,
    click_token,
    verify_click,
)
from scheduler.http_app import run_http_app
from scheduler.store.tables import deliveries, tracking_events
from tests.newsletter_fixtures import SECRET, claim_run, settings_for, write_config
from tests.smtp_server import SmtpServer

BASE = "https://mt.acme.example"
UTM = "utm_source=nl&utm_medium=email&utm_campaign=news"
HTML = """<html><body>
<p>Hi {{ first_name }} <a href="https://acme.example/news">News</a>
<a href='http://acme.example/a?x=1&amp;y=2'>Two</a>
<a href="mailto:help@acme.example">Mail us</a>
<a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""
RECIPIENTS = ["ann@example.com", "bob@example.com"]


class Sent:
    def __init__(self, ctx: ServiceContext, run_id: int, received: list[Any]) -> None:
        self.ctx, self.run_id = ctx, run_id
        self.messages = {item.rcpt_tos[0]: item.parsed() for item in received}

    def html(self, rcpt: str) -> str:
        return str(self.messages[rcpt].get_body(("html",)).get_content())

    def text(self, rcpt: str) -> str:
        return str(self.messages[rcpt].get_body(("plain",)).get_content())

    def delivery_id(self, rcpt: str) -> int:
        with self.ctx.begin() as conn:
            return int(conn.execute(sa.select(deliveries.c.id).where(
                deliveries.c.run_id == self.run_id, deliveries.c.recipient == rcpt)).scalar_one())

    def events(self) -> list[tuple[str, str | None, int | None, int | None, str | None,
                                   str | None]]:
        with self.ctx.begin() as conn:
            return [tuple(r) for r in conn.execute(  # type: ignore[misc]
                sa.select(tracking_events.c.kind, tracking_events.c.campaign,
                          tracking_events.c.run_id, tracking_events.c.delivery_id,
                          tracking_events.c.recipient, tracking_events.c.url)
                .where(tracking_events.c.kind.in_(("opened", "clicked")))
                .order_by(tracking_events.c.id))]


async def _send(tmp_path: Path, db: Engine, t0: datetime, *, extra: dict[str, Any] | None = None,
                **settings: Any) -> tuple[Sent, FakeClock]:
    write_config(tmp_path, rows=RECIPIENTS, html=HTML, extra=extra)
    clock = FakeClock(t0)
    with SmtpServer() as server:
        values = settings_for(tmp_path, db.url.render_as_string(hide_password=False),
                              port=server.port, http_port=0, **settings)
        ctx = ServiceContext(values, load_config(values.config_dir), db, clock)
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert result.status == "done", result.detail
    return Sent(ctx, run_id, list(server.received)), clock


@pytest.fixture
async def http(db: Engine, tmp_path: Path, t0: datetime
               ) -> AsyncIterator[tuple[Sent, aiohttp.ClientSession, str]]:
    sent, _clock = await _send(tmp_path, db, t0)
    task = asyncio.create_task(run_http_app(sent.ctx, build_registry().http_routes))
    deadline = asyncio.get_running_loop().time() + 5
    while "http_port" not in sent.ctx.extras:  # waiting on a real bind, not moving time
        assert not task.done(), task.exception()
        assert asyncio.get_running_loop().time() < deadline, "http app did not start"
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{sent.ctx.extras['http_port']}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield sent, session, url
    sent.ctx.stopping.set()
    await asyncio.wait_for(task, 5)


def _click_links(html: str) -> list[str]:
    return re.findall(r"""href=["'](https://mt\.acme\.example/c/[^"']+)["']""", html)


def _local(link: str, url: str) -> str:
    return link.replace(BASE, url)


async def test_received_html_is_tracked_and_text_is_not(
        http: tuple[Sent, aiohttp.ClientSession, str]) -> None:
    sent, _session, _url = http
    signer = Signer(SECRET)
    for rcpt in RECIPIENTS:
        html, text = sent.html(rcpt), sent.text(rcpt)
        delivery_id = sent.delivery_id(rcpt)
        links = _click_links(html)
        assert [verify_click(signer, link.rsplit("/", 1)[1]) for link in links] == [
            (delivery_id, f"https://acme.example/news?{UTM}"),
            (delivery_id, f"http://acme.example/a?x=1&y=2&{UTM}")]
        assert "https://acme.example/news" not in html  # no plain tracked link left
        assert 'href="mailto:help@acme.example"' in html
        assert re.search(r'href="https://mt\.acme\.example/unsubscribe/[^"]+"', html)
        pixel = re.findall(r'<img src="https://mt\.acme\.example/o/([^"]+)\.gif" width="1" '
                           r'height="1" alt="">\s*</body>', html)
        assert len(pixel) == 1
        assert f"News (https://acme.example/news?{UTM})" in text and "/c/" not in text


async def test_click_redirects_to_the_signed_url_and_records_it(
        http: tuple[Sent, aiohttp.ClientSession, str]) -> None:
    sent, session, url = http
    link = _click_links(sent.html("ann@example.com"))[0]
    async with session.get(_local(link, url), allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == f"https://acme.example/news?{UTM}"
        assert "no-store" in resp.headers["Cache-Control"]
    assert sent.events() == [("clicked", "news", sent.run_id, sent.delivery_id("ann@example.com"),
                              "ann@example.com", f"https://acme.example/news?{UTM}")]


async def test_altered_or_forged_tokens_never_redirect(
        http: tuple[Sent, aiohttp.ClientSession, str]) -> None:
    sent, session, url = http
    signer = Signer(SECRET)
    link = _click_links(sent.html("ann@example.com"))[0]
    token = link.rsplit("/", 1)[1]
    payload = signer.verify(CLICK, token)
    raw = b64decode_strict(token)
    assert payload is not None and raw is not None
    evil_payload = payload.replace("acme.example", "evil.example")
    evil = Signer("other").sign(CLICK, evil_payload)
    altered = b64encode(raw[:4] + evil_payload.encode() + raw[-16:])  # the original MAC kept
    javascript = signer.sign(CLICK, "1\x1fjavascript:alert(1)")  # genuine MAC, unsafe target
    for bad in (altered, evil, javascript, "garbage", token[:-2] + "AA"):
        async with session.get(f"{url}/c/{bad}", allow_redirects=False) as resp:
            assert resp.status == 400, bad
            assert "Location" not in resp.headers
    assert sent.events() == []
    for target in ("javascript:alert(1)", "data:text/html,x", "ftp://acme.example/",
                   "https://", "https://x.example/\r\nSet-Cookie: a=b"):
        with pytest.raises(ValueError):
            click_token(signer, 1, target)
    tracker = LinkTracker(signer, BASE, clicks=True, opens=False)
    page = '<a href="javascript:alert(1)">x</a><a href="HTTPS://ok.example/">y</a>'
    assert tracker.apply(page, 7).startswith('<a href="javascript:alert(1)">x</a>')


async def test_pixel_records_one_open_per_delivery(
        http: tuple[Sent, aiohttp.ClientSession, str], t0: datetime) -> None:
    sent, session, url = http
    html = sent.html("bob@example.com")
    src = re.search(r'<img src="(https://mt\.acme\.example/o/[^"]+\.gif)"', html)
    assert src is not None
    for _ in range(2):
        async with session.get(_local(src.group(1), url)) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/gif"
            assert "no-cache" in resp.headers["Cache-Control"]
            assert (await resp.read()).startswith(b"GIF89a")
    assert sent.events() == [("opened", "news", sent.run_id, sent.delivery_id("bob@example.com"),
                              "bob@example.com", None)]
    async with session.get(f"{url}/o/forged.gif") as resp:
        assert resp.status == 400
    link = _click_links(html)[0]
    for _ in range(2):
        async with session.get(_local(link, url), allow_redirects=False) as resp:
            assert resp.status == 302
    with sent.ctx.begin() as conn:
        report = gather(conn, "r", {"news": "newsletter"}, [], t0, t0.replace(year=2027), t0)
    news = report.campaigns[0]
    assert news.events["opened"] == 1 and news.events["clicked"] == 2
    assert news.unique == {"opened": 1, "clicked": 1}


async def test_track_false_leaves_links_and_body_alone(
        tmp_path: Path, db: Engine, t0: datetime) -> None:
    sent, _clock = await _send(tmp_path, db, t0, extra={"track": {"clicks": False}})
    html = sent.html("ann@example.com")
    assert _click_links(html) == []
    assert f"https://acme.example/news?{UTM.replace('&', '&amp;')}" in html
    assert "/o/" in html  # opens are still on
    sent.ctx.db.dispose()


async def test_without_public_base_url_nothing_is_rewritten(
        tmp_path: Path, db: Engine, t0: datetime) -> None:
    sent, _clock = await _send(tmp_path, db, t0, public_base_url=None)
    html = sent.html("ann@example.com")
    assert "/c/" not in html and "<img" not in html
    assert f"https://acme.example/news?{UTM.replace('&', '&amp;')}" in html
