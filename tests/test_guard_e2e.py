"""End to end: a 20k-recipient newsletter sending to aiosmtpd while the guarded website goes
down. Sending stops within one batch of the guard's decision; when the site is back the run
resumes and every recipient gets exactly one e-mail; the alert e-mail and webhook arrive."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from jobs.guard.runner import Guard
from martech.compose import build_registry, load_config
from scheduler import outbox as outbox_sender
from scheduler.clock import FakeClock
from scheduler.context import ServiceContext
from scheduler.engine import Engine as RunEngine
from scheduler.settings import Settings
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.db import make_engine, upgrade
from scheduler.store.tables import deliveries, outbox
from tests.http_server import HttpServer
from tests.smtp_server import SmtpServer
from tests.test_guard_service import start_guard
from tests.webhook_server import Receiver, serve

RECIPIENTS = 20_000
BATCH = 500


def sent_count(db: Engine, run_id: int) -> int:
    with db.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(deliveries).where(
            deliveries.c.run_id == run_id, deliveries.c.status == "sent")).scalar_one())


def write_world(root: Path, site_url: str, hook_url: str) -> tuple[Path, Path]:
    cfg, templates = root / "config", root / "templates"
    (cfg / "campaigns").mkdir(parents=True)
    (cfg / "audiences").mkdir()
    templates.mkdir()
    lines = ["email,first_name,tags"] + [f"r{i:05d}@example.com,R{i},newsletter"
                                         for i in range(RECIPIENTS)]
    (cfg / "audiences" / "all.csv").write_text("\n".join(lines) + "\n")
    (templates / "digest.html").write_text("<p>Hello {{ first_name }}</p>")
    (templates / "digest.txt").write_text("Hello {{ first_name }}")
    (cfg / "campaigns" / "digest.yaml").write_text(textwrap.dedent(f"""
        name: digest
        kind: newsletter
        schedule: {{cron: "0 9 * * MON", timezone: Europe/Berlin}}
        audience: {{csv: audiences/all.csv}}
        from: "Acme News <news@acme.example>"
        subject: "Hello {{{{ first_name }}}}"
        template: digest
        send: {{connections: 8, batch_size: {BATCH}}}
        requires: [website]
    """))
    (cfg / "checks.yaml").write_text(textwrap.dedent(f"""
        defaults: {{interval: 30s, timeout: 1s, retry_interval: 5s, failure_threshold: 3}}
        checks:
          website: {{http: {{url: "{site_url}/"}}}}
        alerts:
          - {{email: it-oncall@acme.example}}
          - {{webhook: "{hook_url}"}}
        alert_from: "martech guard <guard@acme.example>"
    """))
    # The example templates dir holds guard-alert.*; the guard falls back to it.
    return cfg, templates


@pytest.mark.slow  # ~20k messages through aiosmtpd in this process: ~50 s, SQLite only
async def test_newsletter_stops_within_one_batch_and_resumes_exactly_once(
        sqlite_url: str, tmp_path: Path) -> None:
    db = make_engine(sqlite_url)
    upgrade(db)
    site = await HttpServer().start()
    smtp = SmtpServer().start()
    try:
        async with serve(Receiver()) as hook:
            await _scenario(db, tmp_path, site, smtp, hook)
    finally:
        smtp.stop()
        await site.stop()
        db.dispose()


async def _scenario(db: Engine, tmp_path: Path, site: HttpServer, smtp: SmtpServer,
                    hook: Receiver) -> None:
    cfg, templates = write_world(tmp_path, site.url, hook.hook_url)
    from datetime import UTC, datetime, timedelta

    clock = FakeClock(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))
    settings = Settings(database_url=str(db.url), config_dir=cfg, templates_dir=templates,
                        var_dir=tmp_path / "var", transport="smtp", smtp_host="127.0.0.1",
                        smtp_port=smtp.port, node_name="e2e",
                        _env_file=None)  # type: ignore[call-arg]
    registry = build_registry()
    ctx = ServiceContext(settings, load_config(cfg), db, clock)
    engine = RunEngine(ctx, registry)
    engine.specs = registry.specs(ctx.config)
    guard = Guard(ctx)
    await start_guard(guard, clock)
    await guard.tick()
    clock.advance(timedelta(seconds=30))
    await guard.tick()  # website up

    sending = asyncio.create_task(engine.run_now("digest"))
    run_id = None
    for _ in range(2000):  # wait (real I/O) until the send is well under way
        await asyncio.sleep(0.01)
        with db.begin() as conn:
            run = run_store.latest_per_campaign(conn).get("digest")
        if run is not None and sent_count(db, run.id) >= 2 * BATCH:
            run_id = run.id
            break
    assert run_id is not None, "the newsletter never got going"

    # The website goes down; the guard decides after three failures 5 s apart (fake time).
    await site.stop()
    clock.advance(timedelta(seconds=30))  # the next regular check
    for _ in range(3):
        assert await guard.tick() == ["website"]
        clock.advance(timedelta(seconds=5))
    with db.begin() as conn:
        assert pauses.reasons(conn, "digest")[0].reason == "guard:website"
    at_decision = sent_count(db, run_id)
    assert at_decision < RECIPIENTS, "sent everything before the guard decided: test is moot"
    await asyncio.wait_for(sending, 30)
    with db.begin() as conn:
        run = run_store.get(conn, run_id)
    assert run is not None and run.status == "held"
    stopped_at = sent_count(db, run_id)
    assert stopped_at - at_decision <= BATCH  # at most one batch after the decision
    assert len(smtp.received) == stopped_at  # nothing else reached the relay

    # Alerts go through the outbox sender: e-mail via the same SMTP pipeline, and the webhook.
    assert await outbox_sender.deliver_due(ctx, 10) == 2
    alert_mail = [m.parsed() for m in smtp.received if "it-oncall@acme.example" in m.rcpt_tos]
    assert len(alert_mail) == 1
    assert str(alert_mail[0]["Subject"]) == "[martech] DOWN: website — 1 campaign(s) paused"
    body = alert_mail[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "  - digest" in body
    # Counted when the guard decided; outcomes are group-committed every few milliseconds, so
    # the batch in flight may have recorded some more before `at_decision` was read.
    held = int(re.search(r"Sends held: (\d+) pending e-mail\(s\)", body)[1])  # type: ignore[index]
    assert RECIPIENTS - at_decision <= held <= RECIPIENTS - at_decision + BATCH
    assert len(hook.delivered) == 1
    assert hook.delivered[0]["text"].startswith("*DOWN: website*")
    assert "Paused: `digest`" in hook.delivered[0]["text"]

    # The site comes back: two successes, the pause clears, the held run is released.
    await site.start()
    clock.advance(timedelta(seconds=30))
    for _ in range(2):
        assert await guard.tick() == ["website"]
        clock.advance(timedelta(seconds=5))
    released = await ctx.in_thread(engine.holds.release)
    assert released == [run_id]
    result = await engine.execute(run_id)
    assert result is not None and result.status == "done", result
    per_rcpt = smtp.per_recipient()
    newsletter = {r: n for r, n in per_rcpt.items() if r.startswith("r")}
    assert len(newsletter) == RECIPIENTS and set(newsletter.values()) == {1}

    assert await outbox_sender.deliver_due(ctx, 10) == 2
    assert smtp.count("it-oncall@acme.example") == 2
    assert hook.delivered[1]["text"].startswith("*UP: website*")
    assert "Resumed: `digest`" in hook.delivered[1]["text"]
    with db.begin() as conn:
        statuses = {r.status for r in conn.execute(sa.select(outbox.c.status))}
    assert statuses == {"sent"}
    await guard.close()
