"""Limits on the public HTTP endpoints: who the client is, and how often it may act.

Behind a reverse proxy every request comes from the proxy; ``X-Forwarded-For`` names the client
only when the proxy is one we trust (``MARTECH_HTTP_TRUSTED_PROXIES``), and then we take the
right-most address that is not a trusted proxy (the left of the header is whatever the client
wrote). The limiter is a token bucket per client, in memory and bounded: per node, which is
enough to make abuse of a cheap endpoint (unsubscribe POSTs) expensive.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime

from aiohttp import web

MAX_CLIENTS = 10_000  # buckets kept; the least recently seen is forgotten first


def _networks(trusted: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for entry in trusted:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue  # a typo must not open the door: an unparsable entry trusts nothing
    return out


class ClientAddress:
    """The client's address of a request, seen through trusted proxies."""

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self._trusted = _networks(trusted_proxies)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def __call__(self, request: web.Request) -> str:
        remote = request.remote or "unknown"
        if not self._is_trusted(remote):
            return remote
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if not self._is_trusted(hop):
                return hop
        return remote


class RateLimiter:
    """At most ``per_min`` actions per client per minute (a burst of ``per_min``, refilled
    evenly); ``per_min`` 0 allows everything."""

    def __init__(self, per_min: int, now: Callable[[], datetime]) -> None:
        self.per_min = per_min
        self._now = now
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        if self.per_min <= 0:
            return True
        now_s = self._now().timestamp()
        tokens, at_s = self._buckets.pop(client, (float(self.per_min), now_s))
        tokens = min(float(self.per_min), tokens + (now_s - at_s) * self.per_min / 60.0)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now_s)
        while len(self._buckets) > MAX_CLIENTS:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after_s(self) -> int:
        return max(1, round(60 / self.per_min)) if self.per_min > 0 else 0
