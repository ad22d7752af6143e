"""Logs hold no tokens and no addresses: aiohttp's own loggers and ours, text and JSON alike."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.engine import Engine

from martech.compose import build_registry, load_config
from scheduler.context import ServiceContext
from scheduler.delivery.tokens import Signer, click_token, unsubscribe_token
from scheduler.http_app import run_http_app
from scheduler.logs import setup_logging
from scheduler.settings import LogFormat
from scheduler.store.tables import deliveries
from tests.newsletter_fixtures import SECRET, claim_run, settings_for, write_config

ADDRESS = "ann.private@example.com"


@dataclass
class Served:
    ctx: ServiceContext
    stream: io.StringIO
    delivery_id: int

    @property
    def port(self) -> int:
        return int(self.ctx.extras["http_port"])


def _boom(app: web.Application, _ctx: ServiceContext) -> None:
    async def fail(_request: web.Request) -> web.Response:
        raise RuntimeError(f"cannot mail {ADDRESS}")  # a bug quoting data in its message

    app.router.add_get("/boom", fail)


@pytest.fixture(params=[LogFormat.text, LogFormat.json], ids=["text", "json"])
async def served(request: pytest.FixtureRequest, restore_logging: None, db: Engine,
                 tmp_path: Path, t0: datetime) -> AsyncIterator[Served]:
    config = write_config(tmp_path, rows=[ADDRESS])
    (config / "checks.yaml").write_text("checks:\n  website: {http: {url: 'http://127.0.0.1:9/'}}\n")
    settings = settings_for(tmp_path, db.url.render_as_string(hide_password=False), http_port=0,
                            log_format=request.param, log_level="DEBUG")
    stream = io.StringIO()
    setup_logging(settings, stream)
    ctx = ServiceContext(settings, load_config(config), db)
    run_id = claim_run(ctx, t0)
    with ctx.begin() as conn:
        delivery_id = int(conn.execute(sa.insert(deliveries).values(
            run_id=run_id, recipient=ADDRESS, status="sent").returning(deliveries.c.id))
            .scalar_one())
    task = asyncio.create_task(run_http_app(ctx, [*build_registry().http_routes, _boom]))
    while "http_port" not in ctx.extras:  # a real bind
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    yield Served(ctx, stream, delivery_id)
    ctx.stopping.set()
    await asyncio.wait_for(task, 5)


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return answer


def _assert_clean(text: str, *tokens: str) -> None:
    for token in tokens:
        assert token not in text
        assert token[:24] not in text  # not even a prefix
    assert ADDRESS not in text and "ann.private" not in text
    assert base64.urlsafe_b64encode(ADDRESS.encode()).decode()[:16] not in text


async def test_a_malformed_request_with_a_token_leaves_no_token_in_the_logs(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = unsubscribe_token(Signer(SECRET), served.delivery_id)
    click = click_token(Signer(SECRET), served.delivery_id, "https://acme.example/?to=" + ADDRESS)
    for stray in (b"\x01", b"\xff", b" x"):
        for path in (f"/unsubscribe/{token}", f"/c/{click}"):
            answer = await _raw(served.port, b"GET " + path.encode() + stray
                                + b" HTTP/1.1\r\nHost: mt.acme.example\r\n\r\n")
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    await _raw(served.port, f"GET /unsubscribe/{token} HTTP/1.1\r\nHost: x\r\nBad Header\r\n"
               "\r\n".encode())
    logged = served.stream.getvalue()
    assert "Error handling request" in logged and "message withheld" in logged
    _assert_clean(logged, token, click)
    # The records themselves are cleaned (a logger filter), so every other handler is too.
    raw = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.exc_info or ''} {r.args}"
                    for r in caplog.records)
    _assert_clean(raw, token, click)


async def test_the_access_log_names_the_route_never_the_path(served: Served) -> None:
    token = unsubscribe_token(Signer(SECRET), served.delivery_id)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{served.port}/unsubscribe/{token}") as resp:
            assert resp.status == 200
            assert ADDRESS in await resp.text()  # the page may show it; the log may not
        async with session.get(f"http://127.0.0.1:{served.port}/boom") as resp:
            assert resp.status == 500
    logged = served.stream.getvalue()
    assert "GET /unsubscribe/{token} 200" in logged
    assert "GET /boom 500" in logged
    assert "RuntimeError: (message withheld" in logged  # frames kept, the message not
    _assert_clean(logged, token)


def test_our_own_lines_hash_addresses_and_hide_tokens(restore_logging: None, tmp_path: Path
                                                      ) -> None:
    signer = Signer(SECRET)
    token = click_token(signer, 5, "https://acme.example/")
    for fmt in (LogFormat.text, LogFormat.json):
        stream = io.StringIO()
        setup_logging(settings_for(tmp_path, "sqlite://", log_format=fmt), stream)
        log = logging.getLogger("martech.test")
        log.warning("bounce from %s for https://mt.acme.example/c/%s", ADDRESS, token,
                    extra={"rcpt": ADDRESS.upper(), "detail": f"550 <{ADDRESS}> unknown"})
        try:
            raise ValueError(f"bad address {ADDRESS}")
        except ValueError:
            log.exception("failed")
        out = stream.getvalue()
        _assert_clean(out.lower(), token.lower())
        assert out.count("example.com#") >= 4  # domain and a keyed hash, to correlate lines
        assert "/c/<token>" in out
    # The same address gives the same reference (correlation), another one another.
    stream = io.StringIO()
    setup_logging(settings_for(tmp_path, "sqlite://"), stream)
    logging.getLogger("martech.test").info("%s %s %s", ADDRESS, ADDRESS, "bob@example.com")
    refs = [w for w in stream.getvalue().split() if "#" in w]
    assert len(refs) == 3 and refs[0] == refs[1] != refs[2]
