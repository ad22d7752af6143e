"""The service's HTTP app: ``/healthz``, ``/metrics``, and the routes the job kinds add
(a newsletter's unsubscribe, click and open links).

Started by ``martech run`` as the ``http`` background component; listens on
``MARTECH_HTTP_HOST:MARTECH_HTTP_PORT`` (port 0 picks a free port, published in
``ctx.extras["http_port"]``) until ``ctx.stopping`` is set. Meant to sit behind a reverse proxy
at ``MARTECH_PUBLIC_BASE_URL``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from scheduler.context import ServiceContext
from scheduler.http_metrics import HttpMetrics
from scheduler.kinds import HttpRoutes
from scheduler.ledger_metrics import FinishedRuns
from scheduler.logs import RouteAccessLogger, guard_http_loggers
from scheduler.metrics import render_from_db
from scheduler.store import heartbeats

log = logging.getLogger("martech.http")

HEALTH_MAX_AGE_S = 60.0  # the default of `martech health --max-age-s`
SHUTDOWN_TIMEOUT_S = 2.0  # in-flight requests are tiny; never hold up the service's stop
MAX_BODY_BYTES = 16 * 1024  # the only bodies we read are one-click form posts
LINGER_S = 2.0
BIND_RETRY_S = (1.0, 30.0)  # first and longest wait before retrying a port that is taken
# The classic text format, which is what generate_latest() writes and every Prometheus reads.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def request_deadline(timeout_s: float) -> Middleware:
    """A request (its body included) that takes longer than ``timeout_s`` gets 408 and its
    connection closed: a client dribbling a body must not hold a handler for ever."""

    @web.middleware
    async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        timer = asyncio.timeout(timeout_s)
        try:
            async with timer:
                return await handler(request)
        except TimeoutError:
            if not timer.expired():
                raise
            log.info("request took longer than %.0fs; closed", timeout_s,
                     extra={"action": "http_timeout"})
            response = web.Response(status=408, text="Request Timeout\n")
            response.force_close()
            return response

    return deadline


def build_app(ctx: ServiceContext, routes: Sequence[HttpRoutes] = ()) -> web.Application:
    http_metrics = HttpMetrics(ctx.clock)
    finished = FinishedRuns()  # settled runs' counts, kept between scrapes
    # Outermost first: the metrics count the deadline's 408s too.
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[
        http_metrics.middleware(), request_deadline(ctx.settings.http_request_timeout_s)])

    async def healthz(_request: web.Request) -> web.Response:
        age_s = await ctx.in_thread(_heartbeat_age_s, ctx)
        if age_s is None:
            return web.Response(status=503, text="unhealthy: no heartbeat\n")
        if age_s >= HEALTH_MAX_AGE_S:
            return web.Response(status=503, text=f"unhealthy: last heartbeat {age_s:.0f}s ago\n")
        return web.Response(text=f"ok: last heartbeat {age_s:.0f}s ago\n")

    async def metrics(_request: web.Request) -> web.Response:
        body = await ctx.in_thread(_render_metrics, ctx, finished, http_metrics)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    for add_routes in routes:
        add_routes(app, ctx)
    return app


def _heartbeat_age_s(ctx: ServiceContext) -> float | None:
    """Seconds since this node's service heartbeat by the database's clock (the clock that
    stamped it), like ``martech health``."""
    with ctx.begin() as conn:
        return heartbeats.age_of(conn, ctx.node, "service")


def _render_metrics(ctx: ServiceContext, finished: FinishedRuns, http: HttpMetrics) -> bytes:
    config = ctx.config  # read afresh: a reload swaps it
    with ctx.begin() as conn:
        return render_from_db(conn, list(config.checks.checks), list(config.campaigns),
                              now=ctx.clock.now(), finished=finished, extra=[http])


async def run_http_app(ctx: ServiceContext, routes: Sequence[HttpRoutes] = ()) -> None:
    """Serve until ``ctx.stopping``; a taken port is logged and retried, never fatal."""
    host, port = ctx.settings.http_host, ctx.settings.http_port
    guard_http_loggers()
    # Paths carry tokens: the access log names the route pattern, never the path. The
    # keep-alive timer runs from the connection's start, so it also closes connections that
    # never finish sending their headers (aiohttp has no separate header timeout).
    runner = web.AppRunner(build_app(ctx, routes), access_log_class=RouteAccessLogger,
                           access_log=logging.getLogger("aiohttp.access"),
                           keepalive_timeout=ctx.settings.http_idle_timeout_s,
                           # A body left unread (a bad token answered at once) is drained
                           # this long before closing, not aiohttp's 10 s.
                           lingering_time=min(LINGER_S, ctx.settings.http_request_timeout_s),
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        wait_s = BIND_RETRY_S[0]
        while not ctx.stopping.is_set():
            try:
                await web.TCPSite(runner, host, port).start()
                break
            except OSError as exc:
                log.error("http app cannot listen on %s:%d (%s); retrying in %.0fs", host, port,
                          exc.strerror or exc, wait_s, extra={"action": "http_bind_failed"})
            if await _stopped_within(ctx, wait_s):
                return
            wait_s = min(wait_s * 2, BIND_RETRY_S[1])
        else:
            return
        bound = runner.addresses[0][1]
        ctx.extras["http_port"] = bound
        log.info("http app listening on %s:%d", host, bound, extra={"action": "http_start"})
        await ctx.stopping.wait()
    finally:
        ctx.extras.pop("http_port", None)
        await runner.cleanup()


async def _stopped_within(ctx: ServiceContext, wait_s: float) -> bool:
    try:
        await asyncio.wait_for(ctx.stopping.wait(), wait_s)
    except TimeoutError:
        return False
    return True
