"""Is the page behind a link there? One checker and one cache for every kind that sends links.

A newsletter checks each distinct link of the rendered message before its first send; a post
reminder checks its post's link before it nudges the social team. Both ask through here, so a
link checked by one is not fetched again by the other within the cache's lifetime (results are
kept per service context: ``cache_for``). Checks are concurrency-bounded and time-limited;
each link gets a ``HEAD`` first and a ``GET`` only when the ``HEAD`` is refused (405, 501, or
the 403 some CDNs give ``HEAD``) or dropped; bodies are never read. 2xx and 3xx are fine
(redirects followed, at most 5), everything else — 4xx, 5xx, no answer — is broken.
"""

from __future__ import annotations

import asyncio
import functools
import html as html_lib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from scheduler.clock import Clock
from scheduler.delivery.webhook import make_timeout

USER_AGENT = "martech-link-check/0.1"
MAX_REDIRECTS = 5
DEFAULT_CONCURRENCY = 8
OK_TTL = timedelta(minutes=10)  # a working link is trusted this long
BROKEN_TTL = timedelta(minutes=1)  # a broken one is asked again soon: someone may fix it
_CACHE_KEY = "link_cache"
HEAD_REFUSED = frozenset({403, 405, 501})
# A link is what a reader can click and what click tracking wraps: the same patterns as
# jobs/newsletter/tracking.py (<a href="http(s)://…">) and UTM tagging of text parts
# (scheduler.delivery.render). Per recipient this is one pass of each: a full HTML parse
# would cost ~20x more, and this runs over every recipient of a run before it sends.
_A_HREF = re.compile(r"""<a\s[^>]*?\bhref\s*=\s*(["'])(https?://[^"']*)\1""", re.IGNORECASE)
_TEXT_URL = re.compile(r"https?://[^\s<>\"')\]]+")


@dataclass(frozen=True)
class LinkStatus:
    ok: bool
    status: int | None
    detail: str  # "HTTP 200", "HTTP 404", "timeout after 5.0s", "ClientConnectorError"


class LinkCache:
    """Results by URL with a time to live, on the injected clock."""

    def __init__(self, clock: Clock, *, ok_ttl: timedelta = OK_TTL,
                 broken_ttl: timedelta = BROKEN_TTL) -> None:
        self.clock = clock
        self.ok_ttl = ok_ttl
        self.broken_ttl = broken_ttl
        self._items: dict[str, tuple[datetime, LinkStatus]] = {}

    def get(self, url: str) -> LinkStatus | None:
        item = self._items.get(url)
        if item is None:
            return None
        until, status = item
        if self.clock.now() >= until:
            del self._items[url]
            return None
        return status

    def put(self, url: str, status: LinkStatus) -> None:
        ttl = self.ok_ttl if status.ok else self.broken_ttl
        self._items[url] = (self.clock.now() + ttl, status)
        if len(self._items) > 100_000:  # bounded: drop the expired, then the oldest
            now = self.clock.now()
            self._items = {u: v for u, v in self._items.items() if v[0] > now}
            while len(self._items) > 50_000:
                self._items.pop(next(iter(self._items)))


def cache_for(ctx: Any) -> LinkCache:
    """The link cache of a service context (``ctx.extras``): shared by all its kinds."""
    cache = ctx.extras.get(_CACHE_KEY)
    if not isinstance(cache, LinkCache):
        cache = ctx.extras[_CACHE_KEY] = LinkCache(ctx.clock)
    return cache


async def _ask(session: aiohttp.ClientSession, method: str, url: str, timeout_s: float) -> int:
    async with (
        asyncio.timeout(timeout_s),
        session.request(method, url, allow_redirects=True, max_redirects=MAX_REDIRECTS,
                        timeout=make_timeout(timeout_s)) as resp,
    ):
        return resp.status


async def probe_link(session: aiohttp.ClientSession, url: str, timeout_s: float
                     ) -> LinkStatus:
    """HEAD, then GET when the HEAD is refused (a 404 or a timeout is the answer already);
    never raises for a network failure."""
    try:
        try:
            status = await _ask(session, "HEAD", url, timeout_s)
            if status not in HEAD_REFUSED:
                return LinkStatus(status < 400, status, f"HTTP {status}")
        except (aiohttp.ClientResponseError, aiohttp.ServerDisconnectedError):
            pass  # e.g. a server that drops HEAD requests: GET decides
        status = await _ask(session, "GET", url, timeout_s)
    except TimeoutError:
        return LinkStatus(False, None, f"timeout after {timeout_s}s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return LinkStatus(False, None, type(exc).__name__)
    return LinkStatus(status < 400, status, f"HTTP {status}")


class LinkChecker:
    """Check many links: each distinct URL once, from the cache when it is fresh."""

    def __init__(self, cache: LinkCache, *, timeout_s: float,
                 concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.cache = cache
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)
        self.fetched = 0  # links actually asked for (the rest came from the cache)

    async def check(self, urls: Iterable[str]) -> dict[str, LinkStatus]:
        wanted = list(dict.fromkeys(urls))
        out: dict[str, LinkStatus] = {}
        todo = []
        for url in wanted:
            cached = self.cache.get(url)
            if cached is not None:
                out[url] = cached
            else:
                todo.append(url)
        if todo:
            sem = asyncio.Semaphore(self.concurrency)
            connector = aiohttp.TCPConnector(limit=self.concurrency)
            async with aiohttp.ClientSession(connector=connector,
                                             cookie_jar=aiohttp.DummyCookieJar(),
                                             headers={"User-Agent": USER_AGENT}) as session:

                async def one(url: str) -> None:
                    async with sem:
                        status = await probe_link(session, url, self.timeout_s)
                    self.fetched += 1
                    self.cache.put(url, status)
                    out[url] = status

                await asyncio.gather(*(one(u) for u in todo))
        return {url: out[url] for url in wanted}


@functools.lru_cache(maxsize=65_536)
def _unescaped(href: str) -> str:
    """The URL an ``href`` stands for (UTM tagging writes ``&amp;``); the same few links
    recur in every recipient's message, hence the cache."""
    return html_lib.unescape(href).strip()


def links_in(html: str | None, text: str | None) -> list[str]:
    """The http(s) links a reader can follow: ``<a href>`` of the HTML part and the URLs
    of the text part, in order of appearance, each once."""
    found: list[str] = []
    if html:
        found.extend(_unescaped(m.group(2)) for m in _A_HREF.finditer(html))
    if text:
        found.extend(_TEXT_URL.findall(text))
    return list(dict.fromkeys(found))


def describe_broken(broken: dict[str, LinkStatus], limit: int = 5) -> str:
    """``2 broken link(s): https://a (HTTP 404), https://b (timeout after 5.0s)``."""
    items = [f"{url} ({status.detail})" for url, status in broken.items()]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} broken link(s): " + ", ".join(items[:limit]) + more
