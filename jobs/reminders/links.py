"""Check a post's link just before its reminder goes out: is the page there?"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from scheduler.delivery.webhook import make_timeout


@dataclass(frozen=True)
class LinkStatus:
    ok: bool
    status: int | None
    detail: str  # "HTTP 200", "HTTP 404", "timeout after 5.0s", "ClientConnectorError"


async def check_link(url: str, timeout_s: float) -> LinkStatus:
    """GET the link (following redirects, body not read); 2xx/3xx is fine, the rest broken."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiohttp.ClientSession(timeout=make_timeout(timeout_s)) as session,
            session.get(url, allow_redirects=True, max_redirects=5,
                        headers={"User-Agent": "martech-link-check"}) as resp,
        ):
            status = resp.status
    except TimeoutError:
        return LinkStatus(False, None, f"timeout after {timeout_s}s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return LinkStatus(False, None, type(exc).__name__)
    return LinkStatus(status < 400, status, f"HTTP {status}")
