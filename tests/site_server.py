"""A real aiohttp server on 127.0.0.1 (port 0) serving a site the test builds: each path has a
status, a body, headers, optional gzip, and an optional delay before the response starts (the
*server* is slow, which is what a slow first byte is). Pages can be changed between requests."""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Resource:
    body: bytes | str = b""
    content_type: str = "text/html"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False
    delay_s: float = 0.0  # the server waits this long before sending anything

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        raw = self.body.encode() if isinstance(self.body, str) else self.body
        headers = {"Content-Type": self.content_type, **self.headers}
        if self.gzip:
            raw = gzip.compress(raw)
            headers["Content-Encoding"] = "gzip"
        return raw, headers


class SiteServer:
    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.hits: dict[str, int] = {}
        self.methods: list[tuple[str, str]] = []
        self.refuse_head = False  # answer HEAD with 405, as some servers do
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, path: str, resource: Resource) -> None:
        self.resources[path] = resource

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        self.methods.append((request.method, path))
        if request.method == "HEAD" and self.refuse_head:
            return web.Response(status=405)
        resource = self.resources.get(path)
        if resource is None:
            return web.Response(status=404, text="not found")
        if resource.delay_s:
            await asyncio.sleep(resource.delay_s)
        body, headers = resource.encoded()
        # Bytes exactly as given: aiohttp must not compress on its own.
        return web.Response(status=resource.status, body=body, headers=headers)

    async def start(self) -> SiteServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
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


def page_html(*, viewport: bool = True, title: str | None = "Black Friday",
              description: bool = True, body: str = "") -> str:
    head = []
    if viewport:
        head.append('<meta name="viewport" content="width=device-width, initial-scale=1">')
    if title is not None:
        head.append(f"<title>{title}</title>")
    if description:
        head.append('<meta name="description" content="48 hours of deals">')
    return (f"<!doctype html><html><head>{''.join(head)}</head>"
            f"<body><h1>Black Friday</h1>{body}</body></html>")


CACHED = {"Cache-Control": "public, max-age=86400"}


def good_site(server: SiteServer) -> None:
    """A page that passes every requirement: compressed, cached, dimensioned, small."""
    server.add("/bf", Resource(page_html(body=(
        '<img src="/hero.jpg" width="800" height="400" alt="">'
        '<script src="/app.js"></script><link rel="stylesheet" href="/site.css">'
    )) + "<!--" + "x" * 2000 + "-->", gzip=True))
    server.add("/hero.jpg", Resource(b"\xff" * 120_000, "image/jpeg", headers=CACHED))
    server.add("/app.js", Resource("console.log(1);" * 300, "application/javascript",
                                   gzip=True, headers=CACHED))
    server.add("/site.css", Resource("body{margin:0}" * 200, "text/css", gzip=True,
                                     headers=CACHED))
