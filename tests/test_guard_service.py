"""The guard end to end on real servers, driven by a fake clock: outages pause exactly the
guarded campaigns within the bound, recoveries resume them, verdicts survive a restart,
"cannot see" pauses nothing, alerts are queued with the facts, checks run concurrently."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.guard.runner import Guard
from jobs.guard.targets import CONNECTIVITY
from jobs.guard.timing import FIRST_SPREAD_S
from martech.compose import load_config
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.settings import Settings
from scheduler.store import pauses
from scheduler.store.tables import check_results, check_state, outbox, tracking_events
from tests.conftest import REPO
from tests.http_server import HttpServer

CAMPAIGNS = {
    "digest": """
        name: digest
        kind: newsletter
        schedule: {cron: "0 9 * * MON", timezone: Europe/Berlin}
        audience: {csv: audiences/a.csv}
        from: "Acme <news@acme.example>"
        subject: "Hi"
        template: weekly-digest
        tags: [newsletter]
    """,
    "pulse": """
        name: pulse
        kind: newsletter
        schedule: {every: 1h}
        audience: {csv: audiences/a.csv}
        from: "Acme <news@acme.example>"
        subject: "Hi"
        template: weekly-digest
        tags: [product]
    """,
    "posts": """
        name: posts
        kind: post_reminder
        posts: [{at: "2026-12-01 10:00", network: x, copy: "hello"}]
        notify: [{email: social@acme.example}]
        requires: [website]
    """,
}


def write_config(root: Path, checks_yaml: str, campaigns: dict[str, str] | None = None) -> Path:
    cfg = root / "config"
    (cfg / "campaigns").mkdir(parents=True, exist_ok=True)
    for name, text in (campaigns or CAMPAIGNS).items():
        (cfg / "campaigns" / f"{name}.yaml").write_text(textwrap.dedent(text))
    (cfg / "checks.yaml").write_text(textwrap.dedent(checks_yaml))
    return cfg


def make_ctx(db: Engine, clock: FakeClock, cfg: Path) -> ServiceContext:
    settings = Settings(database_url=str(db.url), config_dir=cfg,
                        templates_dir=REPO / "templates" / "email",
                        var_dir=cfg.parent / "var", node_name="guard-test",
                        _env_file=None)  # type: ignore[call-arg]
    return ServiceContext(settings, load_config(cfg), db, clock)


def checks_yaml(url: str, extra: str = "", defaults: str = "") -> str:
    return textwrap.dedent(f"""
        defaults: {{interval: 30s, timeout: 1s, retry_interval: 5s, failure_threshold: 3,
                    success_threshold: 2{defaults}}}
        checks:
          website: {{http: {{url: "{url}/", body_contains: "Welcome"}}}}
        guards:
          - {{check: website, pauses: {{tags: [newsletter]}}}}
        alerts:
          - {{email: it-oncall@acme.example}}
          - {{webhook: "http://127.0.0.1:9/hooks/it"}}
          - {{webhook: "http://127.0.0.1:9/hooks/json", format: json, on: [down]}}
        remind_every: 1h
    """) + textwrap.dedent(extra)


def paused(db: Engine) -> dict[str, list[str]]:
    with db.begin() as conn:
        return {c: [p.reason for p in ps] for c, ps in pauses.all_reasons(conn).items()}


def alerts(db: Engine) -> list[sa.Row[Any]]:
    with db.begin() as conn:
        return list(conn.execute(sa.select(outbox).order_by(outbox.c.id)))


def verdict(db: Engine, name: str = "website") -> str | None:
    with db.begin() as conn:
        return conn.execute(sa.select(check_state.c.verdict)
                            .where(check_state.c.check_name == name)).scalar_one_or_none()


@pytest.fixture
async def web() -> AsyncIterator[HttpServer]:
    server = await HttpServer().start()
    yield server
    await server.stop()


async def step_to(guard: Guard, clock: FakeClock, when: datetime) -> list[str]:
    clock.set(when)
    return await guard.tick()


async def start_guard(guard: Guard, clock: FakeClock) -> datetime:
    """Start the guard and move the clock to when every check's first run is due.

    First runs are spread over the first seconds after start-up (``guard_timing``): tests
    count their timings from there.
    """
    await guard.start()
    first = max(e.next_due for e in guard.entries.values())
    assert first - clock.now() < timedelta(seconds=FIRST_SPREAD_S)
    clock.set(first)
    return first


async def test_outage_pauses_guarded_campaigns_and_recovery_resumes(
        db: Engine, t0: datetime, tmp_path: Path, web: HttpServer) -> None:
    clock = FakeClock(t0)
    ctx = make_ctx(db, clock, write_config(tmp_path, checks_yaml(web.url)))
    guard = Guard(ctx)
    t0 = await start_guard(guard, clock)
    assert await guard.tick() == ["website"]
    assert await guard.tick() == []  # not due again before its interval
    await step_to(guard, clock, t0 + timedelta(seconds=30))
    assert verdict(db) == "up"
    assert alerts(db) == []  # pending -> up at start-up is not news

    await web.stop()
    first_fail = t0 + timedelta(seconds=60)
    assert await step_to(guard, clock, first_fail) == ["website"]
    assert verdict(db) == "up" and paused(db) == {}
    assert await step_to(guard, clock, first_fail + timedelta(seconds=4)) == []
    assert await step_to(guard, clock, first_fail + timedelta(seconds=5)) == ["website"]
    assert paused(db) == {}  # two failures in a row: not yet
    await step_to(guard, clock, first_fail + timedelta(seconds=10))
    assert verdict(db) == "down"
    decided = first_fail + timedelta(seconds=10)
    bound = guard.entries["website"].rules.pause_bound()
    assert decided - first_fail <= bound  # timeout + retry_interval x (threshold - 1)
    # Exactly the guarded campaigns: by tag (digest) and campaign-side requires (posts).
    assert paused(db) == {"digest": ["guard:website"], "posts": ["guard:website"]}

    rows = alerts(db)
    assert [(r.channel, r.target) for r in rows] == [
        ("email", "it-oncall@acme.example"), ("webhook", "http://127.0.0.1:9/hooks/it"),
        ("webhook", "http://127.0.0.1:9/hooks/json")]
    mail, slack, plain = (r.payload for r in rows)
    assert mail["subject"] == "[martech] DOWN: website — 2 campaign(s) paused"
    assert "Connect call failed" in mail["text"] and "  - digest\n  - posts" in mail["text"]
    assert "<li>digest</li>" in mail["html"] and mail["from"]
    assert slack["text"].startswith("*DOWN: website*") and "`digest`, `posts`" in slack["text"]
    assert slack["blocks"][0]["text"]["text"] == slack["text"]
    assert plain["event"] == "down" and plain["paused"] == ["digest", "posts"]

    # Still down an hour later: one reminder per route that wants "down".
    await step_to(guard, clock, decided + timedelta(minutes=30))
    assert len(alerts(db)) == 3
    await step_to(guard, clock, decided + timedelta(hours=1, seconds=1))
    reminders = [r for r in alerts(db) if r.payload.get("subject", "").find("STILL") >= 0
                 or "STILL DOWN" in r.payload.get("text", "")]
    assert len(reminders) == 2 and len(alerts(db)) == 6

    # Recovery: one success is not enough; the second resumes both campaigns.
    await web.start()
    back = decided + timedelta(hours=2)
    await step_to(guard, clock, back)
    assert verdict(db) == "down" and len(paused(db)) == 2
    await step_to(guard, clock, back + timedelta(seconds=5))
    assert verdict(db) == "up" and paused(db) == {}
    up_mail = alerts(db)[-2].payload  # email then slack; the json route only wants "down"
    assert up_mail["subject"] == "[martech] UP: website — 2 campaign(s) resumed"
    with db.begin() as conn:
        events = [(r.kind, r.campaign) for r in conn.execute(
            sa.select(tracking_events).order_by(tracking_events.c.id))]
        results = conn.execute(sa.select(sa.func.count()).select_from(check_results)).scalar()
    assert events == [("paused", "digest"), ("paused", "posts"),
                      ("resumed", "digest"), ("resumed", "posts")]
    assert results == 9  # every raw result is kept, apart from the verdict
    await guard.close()


async def test_restart_keeps_the_verdict_and_never_wrongly_resumes(
        db: Engine, t0: datetime, tmp_path: Path, web: HttpServer) -> None:
    clock = FakeClock(t0)
    cfg = write_config(tmp_path, checks_yaml(web.url))
    guard = Guard(make_ctx(db, clock, cfg))
    t0 = await start_guard(guard, clock)
    await web.stop()
    for i in range(3):
        await step_to(guard, clock, t0 + timedelta(seconds=5 * i))
    assert verdict(db) == "down" and set(paused(db)) == {"digest", "posts"}
    await guard.close()

    # A new process: the verdict comes from the database, the site is back but one success
    # is not enough to resume; a manual pause on top stays when the guard's reason goes.
    await web.start()
    clock.advance(timedelta(minutes=10))
    ctx = make_ctx(db, clock, cfg)
    with ctx.begin() as conn:
        pauses.add(conn, "digest", pauses.MANUAL, clock.now(), detail="copy review")
    guard = Guard(ctx)
    await start_guard(guard, clock)
    assert set(paused(db)) == {"digest", "posts"}
    await guard.tick()
    assert verdict(db) == "down" and set(paused(db)) == {"digest", "posts"}
    await step_to(guard, clock, clock.now() + timedelta(seconds=5))
    assert verdict(db) == "up"
    assert paused(db) == {"digest": ["manual"]}
    up = [r.payload for r in alerts(db) if r.channel == "email"][-1]
    assert "digest: manual" in up["text"] and "  - posts" in up["text"]
    await guard.close()


async def test_config_change_pauses_newly_guarded_and_releases_removed(
        db: Engine, t0: datetime, tmp_path: Path, web: HttpServer) -> None:
    clock = FakeClock(t0)
    cfg = write_config(tmp_path, checks_yaml(web.url))
    ctx = make_ctx(db, clock, cfg)
    guard = Guard(ctx)
    t0 = await start_guard(guard, clock)
    await web.stop()
    for i in range(3):
        await step_to(guard, clock, t0 + timedelta(seconds=5 * i))
    assert set(paused(db)) == {"digest", "posts"}
    # IT now guards every campaign with the website check: pulse is paused too.
    (cfg / "checks.yaml").write_text(checks_yaml(web.url).replace(
        "{tags: [newsletter]}", "all"))
    ctx.config = load_config(cfg)
    await step_to(guard, clock, clock.now() + timedelta(seconds=2))
    assert set(paused(db)) == {"digest", "posts", "pulse"}
    # The check is removed altogether: nothing can hold its pauses any more.
    (cfg / "checks.yaml").write_text("checks: {}\n")
    for name in ("posts",):
        (cfg / "campaigns" / f"{name}.yaml").unlink()
    ctx.config = load_config(cfg)
    await step_to(guard, clock, clock.now() + timedelta(seconds=2))
    assert paused(db) == {}
    await guard.close()


async def test_cannot_see_is_unknown_alerts_and_pauses_nothing(
        db: Engine, t0: datetime, tmp_path: Path, web: HttpServer) -> None:
    gateway = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    gw_port = gateway.sockets[0].getsockname()[1]
    extra = f"""
        connectivity: {{tcp: {{host: 127.0.0.1, port: {gw_port}}}, failure_threshold: 2}}
    """
    clock = FakeClock(t0)
    guard = Guard(make_ctx(db, clock, write_config(tmp_path, checks_yaml(web.url, extra))))
    t0 = await start_guard(guard, clock)
    await guard.tick()
    await step_to(guard, clock, t0 + timedelta(seconds=30))
    assert verdict(db) == "up" and verdict(db, CONNECTIVITY) == "up"
    # The guard loses its own network: the site and the gateway both look dead.
    await web.stop()
    gateway.close()
    await gateway.wait_closed()
    for i in range(6):
        await step_to(guard, clock, t0 + timedelta(seconds=60 + 5 * i))
    assert verdict(db) == "up" and paused(db) == {}
    with guard.ctx.begin() as conn:
        outcomes = {r.outcome for r in conn.execute(
            sa.select(check_results.c.outcome).where(check_results.c.check_name == "website",
                                                     check_results.c.at > t0 + timedelta(
                                                         seconds=59)))}
    assert outcomes == {"unknown"}
    rows = alerts(db)
    assert {r.payload.get("subject") or r.payload.get("text", "")[:30] for r in rows} >= {
        "[martech] CANNOT SEE: guard connectivity"}
    assert [r.channel for r in rows] == ["email", "webhook"]  # the json route wants only down
    assert "nothing was paused" in rows[0].payload["text"]
    await guard.close()


async def test_slow_check_does_not_delay_others_and_never_overlaps(
        db: Engine, t0: datetime, tmp_path: Path, web: HttpServer) -> None:
    web.slow_s = 5.0
    extra = """
        max_concurrent_checks: 4
    """
    yaml = checks_yaml(web.url, extra).replace(
        "checks:\n", f'checks:\n  slow: {{http: {{url: "{web.url}/slow"}}, timeout: 1500ms}}\n'
        f'  fast-a: {{tcp: {{host: 127.0.0.1, port: {web.port}}}}}\n'
        f'  fast-b: {{http: {{url: "{web.url}/health"}}}}\n', 1)
    clock = FakeClock(t0)
    guard = Guard(make_ctx(db, clock, write_config(tmp_path, yaml)))
    await start_guard(guard, clock)
    loop = asyncio.get_running_loop()
    began = loop.time()
    started = await guard.tick(wait=False)
    assert set(started) == {"slow", "fast-a", "fast-b", "website"}
    fast = [guard.entries[n].task for n in ("fast-a", "fast-b", "website")]
    await asyncio.gather(*[t for t in fast if t is not None])
    assert loop.time() - began < 1.0  # the slow one is still running
    assert guard.stats.last["fast-b"].ok
    # It is due again (fake time moved past its retry) but still running: no second copy.
    clock.advance(timedelta(minutes=5))
    again = await guard.tick(wait=False)
    assert "slow" not in again
    slow_task = guard.entries["slow"].task
    assert slow_task is not None
    await slow_task
    assert loop.time() - began < 2.5  # its own timeout, not the server's 5 s
    slow = guard.stats.last["slow"]
    assert slow.outcome == "fail" and "timed out" in slow.detail
    await guard.flush()
    await guard.close()
