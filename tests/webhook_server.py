"""A real HTTP server on 127.0.0.1, port 0: a webhook receiver and pages for link checks.

``POST /hook``        records the JSON body; answers ``fail_status`` for the first
                      ``fail_first`` requests, then 200. ``hang_s`` delays every answer.
``GET /ok``, ``GET /missing`` (404), ``GET /down`` (503): pages a reminder may link to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Receiver:
    fail_first: int = 0
    fail_status: int = 500
    hang_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)  # every POST, failed or not
    delivered: list[dict[str, Any]] = field(default_factory=list)  # the ones answered 2xx
    page_hits: list[str] = field(default_factory=list)
    base_url: str = ""

    @property
    def hook_url(self) -> str:
        return f"{self.base_url}/hook/T000/B000/secret-token"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if len(self.requests) <= self.fail_first:
            return web.Response(status=self.fail_status, text="receiver says no")
        self.delivered.append(body)
        return web.Response(text="ok")

    async def _page(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.page_hits.append(name)
        status = {"ok": 200, "missing": 404, "down": 503}.get(name, 404)
        return web.Response(status=status, text=f"page {name}")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook/{tail:.*}", self._hook)
        app.router.add_get("/{name}", self._page)
        return app


@asynccontextmanager
async def serve(receiver: Receiver | None = None) -> AsyncIterator[Receiver]:
    receiver = receiver or Receiver()
    runner = web.AppRunner(receiver.app(), shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined,union-attr]
    receiver.base_url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
