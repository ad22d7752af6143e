"""The HTTP app on a real aiohttp server (127.0.0.1, port 0) over SQLite and PostgreSQL:
unsubscribe links exactly as newsletters carry them, /metrics, /healthz, and a prompt stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from jobs.newsletter.kind import send_run
from martech.compose import build_registry, load_config
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.delivery.tokens import Signer, click_token, unsubscribe_token
from scheduler.http_app import run_http_app
from scheduler.service import Service
from scheduler.settings import Settings
from scheduler.store import dbclock, heartbeats, pauses
from scheduler.store import suppressions as suppression_store
from scheduler.store.tables import check_state, deliveries, tracking_events
from tests.newsletter_fixtures import SECRET, claim_run, settings_for, write_config
from tests.smtp_server import SmtpServer

BASE_URL = "https://mt.acme.example"  # settings_for's MARTECH_PUBLIC_BASE_URL
ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}
CHECKS_YAML = "checks:\n  website: {http: {url: 'http://127.0.0.1:9/'}}\n"


@dataclass
class App:
    ctx: ServiceContext
    clock: FakeClock
    task: asyncio.Task[None]
    session: aiohttp.ClientSession
    runs: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ctx.extras['http_port']}"

    def events(self) -> list[tuple[str, str | None, str | None]]:
        with self.ctx.begin() as conn:
            return [(r.kind, r.campaign, r.recipient) for r in conn.execute(
                sa.select(tracking_events.c.kind, tracking_events.c.campaign,
                          tracking_events.c.recipient)
                .where(tracking_events.c.kind == "unsubscribed"))]

    def suppressed(self, email: str) -> str | None:
        with self.ctx.begin() as conn:
            return suppression_store.reason_of(conn, email)

    def delivery(self, email: str, campaign: str = "news") -> int:
        """A delivery of ``email`` in a run of ``campaign``: what a token names."""
        if campaign not in self.runs:
            self.runs[campaign] = claim_run(self.ctx, self.clock.now(), campaign)
        with self.ctx.begin() as conn:
            return int(conn.execute(sa.insert(deliveries).values(
                run_id=self.runs[campaign], recipient=email, status="sent")
                .returning(deliveries.c.id)).scalar_one())

    def link(self, email: str, campaign: str = "news", secret: str = SECRET) -> str:
        """The path of the List-Unsubscribe https URL, as the newsletter builds it."""
        return f"/unsubscribe/{unsubscribe_token(Signer(secret), self.delivery(email, campaign))}"


async def start_app(ctx: ServiceContext) -> asyncio.Task[None]:
    task = asyncio.create_task(run_http_app(ctx, build_registry().http_routes))
    deadline = asyncio.get_running_loop().time() + 5
    while "http_port" not in ctx.extras:  # waiting on a real bind, not moving time
        assert not task.done(), task.exception()
        assert asyncio.get_running_loop().time() < deadline, "http app did not start"
        await asyncio.sleep(0.01)
    return task


@pytest.fixture
async def app(db: Engine, tmp_path: Path, t0: datetime) -> AsyncIterator[App]:
    config_dir = write_config(tmp_path, rows=["ann@example.com", "Bob@Example.com"])
    (config_dir / "checks.yaml").write_text(CHECKS_YAML)
    settings = settings_for(tmp_path, db.url.render_as_string(hide_password=False), http_port=0)
    clock = FakeClock(t0)
    ctx = ServiceContext(settings, load_config(config_dir), db, clock)
    task = await start_app(ctx)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield App(ctx, clock, task, session)
    ctx.stopping.set()
    await asyncio.wait_for(task, 5)


async def test_get_shows_a_confirmation_page_and_changes_nothing(app: App) -> None:
    async with app.session.get(app.url + app.link("ann@example.com")) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        page = await resp.text()
    assert "ann@example.com" in page and "news" in page
    assert '<form method="post" action="">' in page
    assert app.suppressed("ann@example.com") is None and app.events() == []


async def test_page_escapes_what_the_token_carries(app: App) -> None:
    async with app.session.get(app.url + app.link("<i>@example.com", "<b>x</b>")) as resp:
        page = await resp.text()
    assert resp.status == 200
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "&lt;i&gt;@example.com" in page
    assert "<b>x" not in page and "<i>@" not in page


async def test_post_suppresses_and_records_one_event_however_often(
        app: App, caplog: pytest.LogCaptureFixture) -> None:
    path = app.link("Bob@Example.com")
    caplog.set_level(logging.DEBUG)
    for _ in range(2):
        async with app.session.post(app.url + path, data={"List-Unsubscribe": "One-Click"},
                                    headers={"Accept": "text/html"}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "text/html"
            assert "will not receive" in await resp.text()
            assert not resp.history  # never redirected
    assert app.suppressed("bob@example.com") == "unsubscribed"
    assert app.events() == [("unsubscribed", "news", "Bob@Example.com")]
    with app.ctx.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tracking_events)).scalar() == 1
    # Invariant 9: the logs name the campaign and domain, never the address or the token.
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "example.com#" in logged and "news" in logged
    assert "Bob@Example.com".lower() not in logged.lower()
    assert path.rsplit("/", 1)[1] not in logged


async def test_rfc8058_one_click_post(app: App) -> None:
    async with app.session.post(app.url + app.link("ann@example.com"),
                                data="List-Unsubscribe=One-Click", headers=ONE_CLICK,
                                allow_redirects=False) as resp:
        assert resp.status == 200
        assert await resp.text() == "unsubscribed\n"
    assert app.suppressed("ann@example.com") == "unsubscribed"
    assert app.events() == [("unsubscribed", "news", "ann@example.com")]


@pytest.mark.parametrize("suppressed_before", [False, True], ids=["new", "already-suppressed"])
async def test_concurrent_clicks_record_one_event(app: App, t0: datetime,
                                                  suppressed_before: bool) -> None:
    if suppressed_before:  # then no unique-key conflict serialises the clicks; a row lock must
        with app.ctx.begin() as conn:
            suppression_store.add(conn, "ann@example.com", "manual", t0)
    url = app.url + app.link("ann@example.com")

    async def click() -> int:
        async with app.session.post(url, data="List-Unsubscribe=One-Click",
                                    headers=ONE_CLICK) as resp:
            return resp.status

    assert await asyncio.gather(*(click() for _ in range(8))) == [200] * 8
    assert app.events() == [("unsubscribed", "news", "ann@example.com")]


async def test_a_second_campaign_is_recorded_against_an_existing_suppression(
        app: App, t0: datetime) -> None:
    with app.ctx.begin() as conn:
        suppression_store.add(conn, "ann@example.com", "hard_bounce", t0)
    async with app.session.post(app.url + app.link("ann@example.com", "digest"),
                                data="List-Unsubscribe=One-Click", headers=ONE_CLICK) as resp:
        assert resp.status == 200
    assert app.suppressed("ann@example.com") == "hard_bounce"  # the first reason stays
    assert app.events() == [("unsubscribed", "digest", "ann@example.com")]


BAD_TOKENS: dict[str, Callable[[App], str]] = {
    "forged": lambda app: app.link("ann@example.com", secret="someone-elses-key"),
    "tampered": lambda app: app.link("ann@example.com")[:-2] + "AA",
    "click-token": lambda app: "/unsubscribe/" + click_token(
        Signer(SECRET), app.delivery("ann@example.com"), "https://acme.example/"),
    "no-such-delivery": lambda app: "/unsubscribe/" + unsubscribe_token(Signer(SECRET), 99999),
    "garbage": lambda app: "/unsubscribe/not-a-token",
    "non-ascii": lambda app: "/unsubscribe/%C3%A9.%C3%A9",
    "huge": lambda app: "/unsubscribe/" + "A" * 5000,
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_tokens_are_400_and_record_nothing(app: App, kind: str) -> None:
    path = BAD_TOKENS[kind](app)
    for method in ("GET", "POST"):
        async with app.session.request(method, app.url + path, data="List-Unsubscribe=One-Click",
                                       headers=ONE_CLICK, allow_redirects=False) as resp:
            assert resp.status == 400
            assert resp.content_type == "text/plain"
            assert "not valid" in await resp.text()
    assert app.events() == []
    assert app.suppressed("ann@example.com") is None


async def test_metrics_serve_the_guard_gauges(app: App, t0: datetime) -> None:
    with app.ctx.begin() as conn:
        conn.execute(sa.insert(check_state).values(check_name="website", verdict="down",
                                                   since=t0))
        pauses.add(conn, "news", pauses.guard_reason("website"), t0)
    async with app.session.get(app.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    values = {(s.name, tuple(s.labels.values())): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    assert values[("martech_check_state", ("website",))] == 0.0
    assert values[("martech_check_up", ("website",))] == 0.0
    assert values[("martech_campaign_paused", ("news",))] == 1.0
    assert values[("martech_campaign_pause_reasons", ("news",))] == 1.0


async def test_healthz_follows_this_nodes_heartbeat(app: App) -> None:
    """The age is the database's: the beat was stamped by its clock, and is judged by it."""
    async def get() -> tuple[int, str]:
        async with app.session.get(app.url + "/healthz") as resp:
            return resp.status, await resp.text()

    def beat(node: str, age_s: float) -> None:
        with app.ctx.begin() as conn:
            heartbeats.beat(conn, node, "service",
                            dbclock.db_now(conn) - timedelta(seconds=age_s))

    status, text = await get()
    assert (status, text) == (503, "unhealthy: no heartbeat\n")
    beat("other-node", 0)
    assert (await get())[0] == 503  # another node's heartbeat says nothing about this one
    beat(app.ctx.node, 12)
    assert await get() == (200, "ok: last heartbeat 12s ago\n")
    beat(app.ctx.node, 72)
    assert await get() == (503, "unhealthy: last heartbeat 72s ago\n")
    app.clock.advance(3600)  # the node's own clock says nothing about the database's beats
    assert await get() == (503, "unhealthy: last heartbeat 72s ago\n")
    with app.ctx.begin() as conn:
        heartbeats.beat(conn, app.ctx.node, "service")  # what the engine does: no `at`
    assert await get() == (200, "ok: last heartbeat 0s ago\n")


async def test_stops_promptly_with_a_client_connected(app: App) -> None:
    async with app.session.get(app.url + "/healthz") as resp:  # leaves a keep-alive connection
        await resp.read()
    port = app.ctx.extras["http_port"]
    started = asyncio.get_running_loop().time()
    app.ctx.stopping.set()
    await asyncio.wait_for(app.task, 5)
    assert asyncio.get_running_loop().time() - started < 2.5
    assert "http_port" not in app.ctx.extras
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_taken_port_is_retried_not_fatal(app: App, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    settings = app.ctx.settings.model_copy(update={"http_port": app.ctx.extras["http_port"]})
    second = ServiceContext(settings, app.ctx.config, app.ctx.db, app.clock)
    task = asyncio.create_task(run_http_app(second, build_registry().http_routes))
    deadline = asyncio.get_running_loop().time() + 5
    while not any(r.__dict__.get("action") == "http_bind_failed" for r in caplog.records):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert not task.done()
    second.stopping.set()
    await asyncio.wait_for(task, 2)


def test_martech_run_starts_the_http_app_and_the_outbox(tmp_path: Path) -> None:
    settings = Settings(config_dir=tmp_path, var_dir=tmp_path / "var",
                        _env_file=None)  # type: ignore[call-arg]
    components = Service(settings, build_registry()).components()
    assert {"http", "outbox", "guard"} <= set(components)


async def test_a_newsletter_sent_after_unsubscribing_skips_the_address(
        app: App, t0: datetime) -> None:
    with SmtpServer() as smtp:
        ctx = ServiceContext(app.ctx.settings.model_copy(update={"smtp_port": smtp.port}),
                             app.ctx.config, app.ctx.db, app.clock)
        first = await send_run(ctx, ctx.config.campaigns["news"], claim_run(ctx, t0),
                               on_pause="return")
        assert first.status == "done" and first.stats["sent"] == 2
        # The audience row says Bob@Example.com; the ledger (and so the token) lower-cases it.
        [bob] = [m.parsed() for m in smtp.received if m.rcpt_tos == ["bob@example.com"]]
        https = bob["List-Unsubscribe"].split(",")[0].strip(" <>")
        assert https.startswith(BASE_URL + "/unsubscribe/")
        # The reverse proxy maps MARTECH_PUBLIC_BASE_URL onto the app's root.
        async with app.session.post(app.url + https.removeprefix(BASE_URL),
                                    data="List-Unsubscribe=One-Click", headers=ONE_CLICK) as resp:
            assert resp.status == 200
        second = await send_run(ctx, ctx.config.campaigns["news"],
                                claim_run(ctx, t0 + timedelta(days=7)), on_pause="return")
    assert second.status == "done"
    assert (second.stats["sent"], second.stats["suppressed"]) == (1, 1)
    assert smtp.per_recipient() == {"ann@example.com": 2, "bob@example.com": 1}
    assert app.events() == [("unsubscribed", "news", "bob@example.com")]
