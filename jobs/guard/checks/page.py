"""Landing-page readiness: fetch the page and the assets it references, then measure.

Time to first byte, the page weight as transferred (bodies are read compressed, as a browser
receives them), the largest images, images without dimensions, gzip/br and cache headers of
text assets, the viewport meta tag, ``<title>`` and meta description, broken assets. Only the
page's own origin and the listed CDNs are fetched (a check must not hammer third parties),
at most ``max_assets``, six at a time like a browser, each under ``asset_timeout`` and all of
them within the check's ``timeout`` (the total budget).
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
import zlib
from typing import Any

import aiohttp
import brotli

from jobs.guard.checks.base import Deadline, ProbeFailed, ProbeReport
from jobs.guard.checks.pagefindings import (
    AssetKind,
    AssetRef,
    Fetched,
    allowed_hosts,
    fetchable,
    judge,
    largest_images,
    parse_page,
)
from jobs.guard.checks.tlsinfo import client_context
from scheduler.config.checks import PageCheck
from scheduler.sizes import format_size

MAX_PAGE_BYTES = 10_000_000  # the HTML document itself; a bigger one is a finding of its own
MAX_ASSET_BYTES = 50_000_000  # counted, not kept; past this we stop reading and say so
ASSET_CONCURRENCY = 6  # what browsers open per host
MIN_STEP_S = 0.05  # an asset is not started with less budget than this left


class PageProbe:
    kind = "page"

    def __init__(self, spec: PageCheck, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.session = session
        self._ssl: ssl.SSLContext | None = None
        if spec.url.lower().startswith("https:") or spec.cdns:
            self._ssl = client_context(spec.verify_tls, spec.ca_file)

    async def run(self, timeout_s: float) -> ProbeReport:
        spec = self.spec
        deadline = Deadline(timeout_s)
        page, body, final_url = await self._page(deadline)
        if page.error:
            raise ProbeFailed(f"page: {page.error}")
        if page.status not in spec.status:
            raise ProbeFailed(f"page: status {page.status}, expected "
                              f"{' or '.join(map(str, spec.status))}")
        doc = parse_page(_decode(body, page.content_encoding), final_url)
        origin, cdn_hosts = allowed_hosts(final_url, spec.cdns)
        wanted = [r for r in doc.assets if fetchable(r.url, origin, cdn_hosts)]
        third_party = len(doc.assets) - len(wanted)
        capped = wanted[:spec.max_assets]
        assets, unfetched = await self._assets(capped, deadline)
        found = judge(spec, page, doc, assets, origin, unfetched=unfetched, budget_s=timeout_s)
        weight = page.wire_bytes + sum(a.wire_bytes for a in assets)
        findings: dict[str, Any] = {
            "url": spec.url, "final_url": final_url, "status": page.status,
            "ttfb_ms": round(page.ttfb_ms or 0.0, 1), "weight_bytes": weight,
            "page_bytes": page.wire_bytes, "assets_fetched": len(assets),
            "assets_unfetched": unfetched, "assets_third_party": third_party,
            "assets_over_cap": len(wanted) - len(capped),
            "largest_images": largest_images(assets, origin),
            "title": doc.title, "description": doc.description is not None,
            "viewport": doc.viewport, "problems": found.problems, "notes": found.notes,
        }
        if found.problems:
            messages = [p["message"] for p in found.problems]
            raise ProbeFailed(f"{len(messages)} problem(s): " + "; ".join(messages), findings)
        summary = [f"{page.status}", f"TTFB {page.ttfb_ms or 0:.0f} ms",
                   f"{format_size(weight)} in {len(assets) + 1} request(s)"]
        if findings["largest_images"]:
            top = findings["largest_images"][0]
            summary.append(f"largest image {top['url']} {format_size(top['bytes'])}")
        if found.notes:
            summary.append(f"{len(found.notes)} note(s): "
                           + "; ".join(n["message"] for n in found.notes))
        return ProbeReport(", ".join(summary), findings)

    def _kwargs(self, timeout_s: float) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s,
                                        sock_connect=timeout_s, sock_read=timeout_s)
        # auto_decompress off: weight is what travels, and Content-Encoding is what we judge.
        kwargs: dict[str, Any] = {"timeout": timeout, "allow_redirects": True,
                                  "auto_decompress": False,
                                  "headers": {"Accept-Encoding": "gzip, br",
                                              **self.spec.headers}}
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
        return kwargs

    async def _page(self, deadline: Deadline) -> tuple[Fetched, bytes, str]:
        fetched, body, final_url = await fetch(self.session, self.spec.url, "page",
                                               self._kwargs(deadline.left()), MAX_PAGE_BYTES,
                                               keep=True)
        return fetched, body, final_url

    async def _assets(self, refs: list[AssetRef], deadline: Deadline
                      ) -> tuple[list[Fetched], int]:
        """Fetch ``refs`` under the bound; those never started for want of budget are
        counted, those cut off by it are reported as timed out."""
        sem = asyncio.Semaphore(ASSET_CONCURRENCY)
        asset_s = self.spec.asset_timeout.total_seconds()
        skipped = 0

        async def one(ref: AssetRef) -> Fetched | None:
            nonlocal skipped
            async with sem:
                left = deadline.left()
                if left < MIN_STEP_S:
                    skipped += 1
                    return None
                limit_s = min(asset_s, left)
                fetched, _body, _url = await fetch(self.session, ref.url, ref.kind,
                                                   self._kwargs(limit_s), MAX_ASSET_BYTES)
                return fetched

        results = await asyncio.gather(*(one(r) for r in refs))
        return [r for r in results if r is not None], skipped


async def fetch(session: aiohttp.ClientSession, url: str, kind: AssetKind,
                kwargs: dict[str, Any], max_bytes: int, *, keep: bool = False
                ) -> tuple[Fetched, bytes, str]:
    """GET ``url``; the wire facts, the (still encoded) body when ``keep``, the final URL.

    Never raises for a network failure: it is a fact about the asset (``error``).
    """
    limit_s = float(kwargs["timeout"].total)
    started = time.perf_counter()
    body = bytearray()
    try:
        async with asyncio.timeout(limit_s + 0.05):
            async with session.get(url, **kwargs) as resp:
                ttfb_ms = (time.perf_counter() - started) * 1000.0
                size = 0
                async for chunk in resp.content.iter_chunked(65_536):
                    size += len(chunk)
                    if keep:
                        body += chunk
                    if size > max_bytes:
                        break
                headers = resp.headers
                return Fetched(
                    url, kind, resp.status, size,
                    content_type=headers.get("Content-Type", "").split(";")[0].strip().lower(),
                    content_encoding=headers.get("Content-Encoding", ""),
                    cache_control=headers.get("Cache-Control", ""),
                    expires=headers.get("Expires", ""), ttfb_ms=ttfb_ms,
                ), bytes(body), str(resp.url)
    except TimeoutError:
        error = f"timed out after {limit_s:.1f}s"
    except aiohttp.ClientConnectorError as exc:
        error = f"connect: {exc.os_error or exc}"
    except aiohttp.ClientResponseError as exc:
        error = f"http: {exc.status} {exc.message}"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}".strip()
    return Fetched(url, kind, None, len(body), error=error), bytes(body), url


def _decode(body: bytes, encoding: str) -> str:
    """The page's HTML from its encoded bytes (we asked for gzip or br, and read it raw)."""
    encoding = encoding.lower().strip()
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":
            body = brotli.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
    except (OSError, zlib.error, brotli.error) as exc:
        raise ProbeFailed(f"page: cannot decode {encoding} body ({exc})") from None
    return body.decode("utf-8", "replace")
