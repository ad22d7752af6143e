"""Limits on the public endpoints: idle and half-sent requests are closed, and unsubscribe POSTs
are rate-limited per client address (through trusted proxies only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from martech.compose import build_registry, load_config
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.delivery.tokens import Signer, unsubscribe_token
from scheduler.http_app import run_http_app
from scheduler.store.tables import deliveries
from tests.newsletter_fixtures import SECRET, claim_run, settings_for, write_config

ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}


class Served:
    def __init__(self, ctx: ServiceContext, clock: FakeClock, links: list[str]) -> None:
        self.ctx, self.clock, self.links = ctx, clock, links

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ctx.extras['http_port']}"


async def _serve(db: Engine, tmp_path: Path, t0: datetime, **settings: Any
                 ) -> tuple[Served, asyncio.Task[None]]:
    config = write_config(tmp_path, rows=["ann@example.com"])
    (config / "checks.yaml").write_text("checks:\n  website: {http: {url: 'http://127.0.0.1:9/'}}\n")
    clock = FakeClock(t0)
    ctx = ServiceContext(settings_for(tmp_path, db.url.render_as_string(hide_password=False),
                                      http_port=0, **settings), load_config(config), db, clock)
    run_id = claim_run(ctx, t0)
    links = []
    with ctx.begin() as conn:
        for i in range(3):
            delivery = conn.execute(sa.insert(deliveries).values(
                run_id=run_id, recipient=f"p{i}@example.com", status="sent")
                .returning(deliveries.c.id)).scalar_one()
            links.append(f"/unsubscribe/{unsubscribe_token(Signer(SECRET), delivery)}")
    task = asyncio.create_task(run_http_app(ctx, build_registry().http_routes))
    while "http_port" not in ctx.extras:  # a real bind
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    return Served(ctx, clock, links), task


@pytest.fixture
async def limited(db: Engine, tmp_path: Path, t0: datetime) -> AsyncIterator[Served]:
    served, task = await _serve(db, tmp_path, t0, http_idle_timeout_s=0.5,
                                http_request_timeout_s=0.5, unsubscribe_posts_per_min=3)
    yield served
    served.ctx.stopping.set()
    await asyncio.wait_for(task, 5)


async def _closed_within(reader: asyncio.StreamReader, limit_s: float) -> float:
    started = time.perf_counter()
    while await asyncio.wait_for(reader.read(4096), limit_s):
        pass  # a 408/400 answer may come first; the close is what counts
    return time.perf_counter() - started


async def test_idle_and_half_sent_requests_are_closed(limited: Served) -> None:
    port = limited.ctx.extras["http_port"]
    partial = [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /unsubscr",
               b"POST /unsubscribe/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"]
    connections = []
    for i in range(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(partial[i % len(partial)])
        await writer.drain()
        connections.append((reader, writer))
    waited = await asyncio.gather(*(_closed_within(r, 5.0) for r, _w in connections))
    assert max(waited) < 3.0  # 0.5 s timeouts; 20 s and more before
    for _r, writer in connections:
        writer.close()
    # ...and it still serves everyone else (503: no heartbeat here; answered, not hung).
    async with aiohttp.ClientSession() as session, session.get(limited.url + "/healthz") as resp:
        assert resp.status == 503


async def test_a_dribbled_body_gets_408(limited: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.ctx.extras["http_port"])
    writer.write(f"POST {limited.links[0]} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                 "Content-Type: application/x-www-form-urlencoded\r\n\r\nList-".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 5)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()


async def _post(session: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with session.post(url, data="List-Unsubscribe=One-Click",
                            headers={**ONE_CLICK, **headers}) as resp:
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
        return resp.status


async def test_unsubscribe_posts_are_rate_limited_per_client(limited: Served) -> None:
    url = limited.url + limited.links[0]
    async with aiohttp.ClientSession() as session:
        assert [await _post(session, url) for _ in range(5)] == [200, 200, 200, 429, 429]
        # Another client behind the (trusted, loopback) proxy has a bucket of its own...
        assert await _post(session, url, **{"X-Forwarded-For": "203.0.113.9"}) == 200
        # ...and a client cannot pick its bucket by writing the header's left side.
        forged = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
        assert [await _post(session, url, **forged) for _ in range(3)] == [200, 200, 429]
        assert (await session.get(url)).status == 200  # GET shows the page: not limited
        limited.clock.advance(60)  # the bucket refills with time
        assert await _post(session, url) == 200


async def test_an_untrusted_proxy_header_is_ignored(db: Engine, tmp_path: Path, t0: datetime
                                                    ) -> None:
    served, task = await _serve(db, tmp_path, t0, unsubscribe_posts_per_min=2,
                                http_trusted_proxies="")
    url = served.url + served.links[1]
    try:
        async with aiohttp.ClientSession() as session:
            statuses = [await _post(session, url, **{"X-Forwarded-For": f"203.0.113.{i}"})
                        for i in range(3)]
        assert statuses == [200, 200, 429]  # one client, whatever it claims
    finally:
        served.ctx.stopping.set()
        await asyncio.wait_for(task, 5)
