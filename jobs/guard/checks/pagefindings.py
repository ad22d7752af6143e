"""What a landing page's HTML references, and what its measurements mean: pure functions.

:mod:`jobs.guard.checks.page` fetches; this module parses the HTML (selectolax's Lexbor, an
HTML5 parser — never regular expressions) and turns the facts into findings, each with the
number that broke the limit in its message, so they can be table-tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

from scheduler.config.checks import PageCheck
from scheduler.sizes import format_size

AssetKind = Literal["page", "image", "script", "style", "icon"]
COMPRESS_MIN_BYTES = 1024  # below this, gzip costs more than it saves: not flagged
COMPRESSED = ("gzip", "br", "zstd", "deflate")
TEXT_TYPES = ("text/", "application/javascript", "application/x-javascript", "application/json",
              "application/xml", "image/svg+xml", "application/manifest+json")
LISTED = 5  # examples named per finding; the rest are counted


@dataclass(frozen=True)
class AssetRef:
    url: str
    kind: AssetKind
    has_dimensions: bool = True  # images: both width and height attributes


@dataclass(frozen=True)
class PageDoc:
    title: str | None
    description: str | None
    viewport: str | None
    assets: tuple[AssetRef, ...]


@dataclass(frozen=True)
class Fetched:
    """One response as seen on the wire (bodies are counted compressed, as transferred)."""

    url: str
    kind: AssetKind
    status: int | None
    wire_bytes: int
    content_type: str = ""
    content_encoding: str = ""
    cache_control: str = ""
    expires: str = ""
    ttfb_ms: float | None = None
    error: str | None = None  # connect error, timeout, …


@dataclass
class Findings:
    problems: list[dict[str, Any]] = field(default_factory=list)  # fail the check
    notes: list[dict[str, Any]] = field(default_factory=list)  # measured, not required

    def add(self, required: bool, code: str, message: str, **facts: Any) -> None:
        (self.problems if required else self.notes).append(
            {"code": code, "message": message, **facts})


def parse_page(html: str, base_url: str) -> PageDoc:
    """Title, description, viewport and the assets a browser would load first."""
    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node is not None else None
    base = tree.css_first("base[href]")
    if base is not None:
        base_url = urljoin(base_url, base.attributes.get("href") or "")
    metas = {(n.attributes.get("name") or "").strip().lower(): n.attributes.get("content")
             for n in tree.css("meta[name]")}
    refs: dict[str, AssetRef] = {}

    def add(raw: str | None, kind: AssetKind, has_dimensions: bool = True) -> None:
        raw = (raw or "").strip()
        if not raw or raw.startswith(("data:", "javascript:", "#")):
            return
        url = urljoin(base_url, raw).split("#", 1)[0]
        if urlsplit(url).scheme in ("http", "https") and url not in refs:
            refs[url] = AssetRef(url, kind, has_dimensions)

    for img in tree.css("img"):
        attrs = img.attributes
        add(attrs.get("src"), "image", bool(attrs.get("width")) and bool(attrs.get("height")))
    for script in tree.css("script[src]"):
        add(script.attributes.get("src"), "script")
    for link in tree.css("link[href]"):
        rel = (link.attributes.get("rel") or "").lower().split()
        if "stylesheet" in rel:
            add(link.attributes.get("href"), "style")
        elif "icon" in rel:
            add(link.attributes.get("href"), "icon")
    return PageDoc(title or None, metas.get("description") or None, metas.get("viewport"),
                   tuple(refs.values()))


def allowed_hosts(page_url: str, cdns: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The page's origin and the CDN host patterns (``cdn.example``, ``*.cdn.example``)."""
    parts = urlsplit(page_url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    hosts = tuple((urlsplit(c).hostname or c) if "://" in c else c.lower() for c in cdns)
    return origin, hosts


def fetchable(url: str, origin: str, cdn_hosts: Iterable[str]) -> bool:
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}".lower() == origin:
        return True
    host = (parts.hostname or "").lower()
    for pattern in cdn_hosts:
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def short(url: str, origin: str) -> str:
    """Same-origin URLs by path (what a web developer recognises), others in full."""
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}".lower() == origin:
        return parts.path + (f"?{parts.query}" if parts.query else "") or "/"
    return url


def _names(items: Sequence[str]) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(items[:LISTED]) + more


def is_text(fetched: Fetched) -> bool:
    return fetched.kind in ("page", "script", "style") or fetched.content_type.startswith(
        TEXT_TYPES)


def cacheable(fetched: Fetched) -> bool:
    control = fetched.cache_control.lower()
    if "no-store" in control or "no-cache" in control:
        return False
    return "max-age" in control or "immutable" in control or bool(fetched.expires)


def judge(spec: PageCheck, page: Fetched, doc: PageDoc, assets: Sequence[Fetched],
          origin: str, *, unfetched: int, budget_s: float) -> Findings:
    """Every finding about the page, required ones as problems (they fail the check)."""
    out = Findings()
    if spec.max_ttfb is not None and page.ttfb_ms is not None:
        limit_ms = spec.max_ttfb.total_seconds() * 1000
        if page.ttfb_ms > limit_ms:
            out.add(True, "ttfb", f"TTFB {page.ttfb_ms:.0f} ms > max {limit_ms:.0f} ms",
                    value=round(page.ttfb_ms, 1), limit=limit_ms)
    weight = page.wire_bytes + sum(a.wire_bytes for a in assets)
    if spec.max_weight is not None and weight > spec.max_weight:
        out.add(True, "weight", f"weight {format_size(weight)} > max "
                f"{format_size(spec.max_weight)} (page {format_size(page.wire_bytes)} + "
                f"{len(assets)} assets)", value=weight, limit=spec.max_weight)
    _images(spec, doc, assets, origin, out)
    _text_assets(spec, page, assets, origin, out)
    _head(spec, doc, out)
    broken = [a for a in assets if a.error or (a.status or 0) >= 400]
    for asset in broken[:LISTED]:
        why = asset.error or f"HTTP {asset.status}"
        out.add(True, "broken_asset", f"{asset.kind} {short(asset.url, origin)}: {why}",
                url=asset.url, status=asset.status)
    if len(broken) > LISTED:
        out.add(True, "broken_asset", f"{len(broken) - LISTED} more broken asset(s)")
    if unfetched:
        out.add(True, "budget", f"{unfetched} asset(s) not fetched within the "
                f"{budget_s:.1f} s budget (raise the check's timeout)", value=unfetched)
    return out


def _images(spec: PageCheck, doc: PageDoc, assets: Sequence[Fetched], origin: str,
            out: Findings) -> None:
    images = sorted((a for a in assets if a.kind == "image" and not a.error),
                    key=lambda a: a.wire_bytes, reverse=True)
    if spec.max_image is not None:
        for image in [i for i in images if i.wire_bytes > spec.max_image]:
            out.add(True, "image_size", f"image {short(image.url, origin)} "
                    f"{format_size(image.wire_bytes)} > max {format_size(spec.max_image)}",
                    url=image.url, value=image.wire_bytes, limit=spec.max_image)
    undimensioned = [short(r.url, origin) for r in doc.assets
                     if r.kind == "image" and not r.has_dimensions]
    if undimensioned:
        out.add(spec.require_image_dimensions, "image_dimensions",
                f"{len(undimensioned)} image(s) without width/height: {_names(undimensioned)}",
                value=len(undimensioned), urls=undimensioned[:LISTED])


def _text_assets(spec: PageCheck, page: Fetched, assets: Sequence[Fetched], origin: str,
                 out: Findings) -> None:
    texts = [a for a in (page, *assets) if not a.error and is_text(a)]
    for item in texts:
        encoding = item.content_encoding.lower()
        if item.wire_bytes >= COMPRESS_MIN_BYTES and not encoding.startswith(COMPRESSED):
            out.add(spec.require_compression, "compression",
                    f"{item.kind} {short(item.url, origin)} {format_size(item.wire_bytes)} "
                    "sent uncompressed (no gzip/br)", url=item.url, value=item.wire_bytes)
    uncached = [short(a.url, origin) for a in texts if a.kind != "page" and not cacheable(a)]
    if uncached:
        out.add(spec.require_cache_headers, "cache",
                f"{len(uncached)} script/style asset(s) without Cache-Control max-age or "
                f"Expires: {_names(uncached)}", value=len(uncached), urls=uncached[:LISTED])


def _head(spec: PageCheck, doc: PageDoc, out: Findings) -> None:
    if not doc.viewport:
        out.add(spec.require_viewport, "viewport",
                'no <meta name="viewport"> (the page is not set up for mobile)')
    elif "width=device-width" not in doc.viewport.replace(" ", "").lower():
        out.add(False, "viewport", f"viewport {doc.viewport!r} lacks width=device-width")
    if not doc.title:
        out.add(spec.require_title, "title", "no <title>")
    if not doc.description:
        out.add(spec.require_description, "description", 'no <meta name="description">')


def largest_images(assets: Sequence[Fetched], origin: str, count: int = 3
                   ) -> list[dict[str, Any]]:
    images = sorted((a for a in assets if a.kind == "image" and not a.error),
                    key=lambda a: a.wire_bytes, reverse=True)[:count]
    return [{"url": short(i.url, origin), "bytes": i.wire_bytes} for i in images]
