"""A real aiohttp server on 127.0.0.1 (port 0) that a test can stop and restart on the same
port, to cause outages and recoveries. Optional TLS with a certificate made in the test.

Routes: ``/`` (200 "Welcome to Acme"), ``/health`` (JSON {"status": "ok", "db": {"ok": true}}),
``/slow`` (sleeps ``slow_s``), ``/redirect`` (302 to ``/``), ``/status/{code}``.
"""

from __future__ import annotations

import asyncio
import ssl

from aiohttp import web


class HttpServer:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.port = 0
        self.slow_s = 2.0
        self.status = 200
        self.hits = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application()

        async def root(_r: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(status=self.status, text="Welcome to Acme, build 42",
                                headers={"X-Served-By": "acme-web-1"})

        async def health(_r: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "db": {"ok": True}, "items": [1, 2]})

        async def slow(_r: web.Request) -> web.Response:
            await asyncio.sleep(self.slow_s)
            return web.Response(text="slow")

        async def redirect(_r: web.Request) -> web.Response:
            raise web.HTTPFound("/")

        async def status(r: web.Request) -> web.Response:
            return web.Response(status=int(r.match_info["code"]), text="status")

        app.router.add_get("/", root)
        app.router.add_get("/health", health)
        app.router.add_get("/slow", slow)
        app.router.add_get("/redirect", redirect)
        app.router.add_get("/status/{code}", status)
        return app

    async def start(self) -> HttpServer:
        runner = web.AppRunner(self._app(), shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.ssl_context,
                           reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined,union-attr]
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def running(self) -> bool:
        return self._runner is not None
