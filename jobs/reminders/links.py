"""Check a post's link just before its reminder goes out: is the page there?

Through the service's shared link checker and cache (``scheduler.delivery.linkcheck``): a link
a newsletter run checked a moment ago is not fetched again for the reminder.
"""

from __future__ import annotations

from scheduler.context import ServiceContext
from scheduler.delivery.linkcheck import LinkChecker, LinkStatus, cache_for

__all__ = ["LinkStatus", "check_link"]


async def check_link(ctx: ServiceContext, url: str) -> LinkStatus:
    """HEAD (GET where HEAD is refused), redirects followed; 2xx/3xx is fine, the rest broken."""
    checker = LinkChecker(cache_for(ctx), timeout_s=ctx.settings.http_timeout_s, concurrency=1)
    return (await checker.check([url]))[url]
