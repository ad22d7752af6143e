"""HTTP requests by route and status, counted in process (each node's own traffic).

The route label is the resource's pattern (``/c/{token}``), never the requested path: a path
carries click and unsubscribe tokens, and labels must stay bounded. Unknown paths share the
label ``unmatched``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from threading import Lock

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from scheduler.clock import Clock

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpMetrics:
    """Counters kept by the middleware; a Prometheus collector of them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            buckets = self._buckets.setdefault(route, [0] * len(DURATION_BUCKETS_S))
            for index, bound in enumerate(DURATION_BUCKETS_S):
                if seconds <= bound:
                    buckets[index] += 1
            self._sums[route] = self._sums.get(route, 0.0) + seconds
            self._counts[route] = self._counts.get(route, 0) + 1

    def collect(self) -> Iterable[Metric]:
        total = CounterMetricFamily("martech_http_requests", "HTTP requests served",
                                    labels=["route", "method", "status"])
        duration = HistogramMetricFamily("martech_http_request_duration_seconds",
                                         "Time to answer an HTTP request", labels=["route"])
        with self._lock:
            for key, n in sorted(self.requests.items()):
                total.add_metric(list(key), n)
            for route, buckets in sorted(self._buckets.items()):
                points = [(str(b), float(c)) for b, c in zip(DURATION_BUCKETS_S, buckets,
                                                             strict=True)]
                points.append(("+Inf", float(self._counts[route])))
                duration.add_metric([route], points, sum_value=self._sums[route])
        return iter([total, duration])

    def middleware(self) -> Middleware:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = self.clock.monotonic()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.observe(route_of(request), request.method, status,
                             max(self.clock.monotonic() - started, 0.0))

        return count  # type: ignore[return-value]


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical
