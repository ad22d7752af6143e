"""A ``page`` check guarding a newsletter: while the landing page is too heavy the campaign is
paused and its run held; once the page is fixed the guard resumes it and the run goes out.
The findings are stored beside each raw result, and ``martech checks`` shows them."""

from __future__ import annotations

import asyncio
import json
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner, Result

from jobs.guard.runner import Guard
from martech.compose import build_registry
from scheduler.cli import make_cli
from scheduler.clock import FakeClock
from scheduler.engine import Engine
from scheduler.store import pauses
from scheduler.store import runs as run_store
from scheduler.store.runs import Claim
from scheduler.store.tables import check_results
from tests.newsletter_fixtures import context_for, settings_for, write_config
from tests.site_server import CACHED, Resource, SiteServer, good_site
from tests.smtp_server import SmtpServer
from tests.test_guard_service import start_guard

RECIPIENTS = [f"reader{i}@example.com" for i in range(6)]


def checks_yaml(url: str) -> str:
    return textwrap.dedent(f"""
        defaults: {{interval: 30s, timeout: 3s, retry_interval: 5s, failure_threshold: 2,
                    success_threshold: 2}}
        checks:
          landing: {{page: {{url: "{url}/bf", max_weight: 1MB, max_image: 300kB}}}}
        guards:
          - {{check: landing, pauses: {{names: [news]}}}}
    """)


async def test_a_heavy_landing_page_holds_the_campaign_until_it_is_fixed(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    site = await SiteServer().start()
    good_site(site)
    site.add("/hero.jpg", Resource(b"\xff" * 1_500_000, "image/jpeg", headers=CACHED))
    config_dir = write_config(tmp_path, rows=RECIPIENTS)
    (config_dir / "checks.yaml").write_text(checks_yaml(site.url))
    clock = FakeClock(t0)
    with SmtpServer() as smtp:
        ctx = context_for(settings_for(tmp_path, db_url, port=smtp.port))
        ctx.clock = clock
        guard = Guard(ctx)
        engine = Engine(ctx, build_registry())
        engine.specs = engine.registry.specs(ctx.config)
        try:
            start = await start_guard(guard, clock)
            await guard.tick()
            clock.set(start + timedelta(seconds=5))
            await guard.tick()
            with ctx.begin() as conn:
                reasons = [p.reason for p in pauses.reasons(conn, "news")]
                detail = next(p.detail for p in pauses.reasons(conn, "news"))
                run_id = run_store.claim(conn, [Claim("news", "news", "newsletter", clock.now(),
                                                      "2026-11-23T09:00:00")],
                                         ctx.node, clock.now())[("news", clock.now())]
            assert reasons == ["guard:landing"]
            assert detail is not None and "weight 1.5 MB > max 1.0 MB" in detail
            assert "image /hero.jpg 1.5 MB > max 300 kB" in detail
            assert await engine.execute(run_id) is None  # held: the page is not ready
            with ctx.begin() as conn:
                assert run_store.get(conn, run_id).status == "held"  # type: ignore[union-attr]
            assert smtp.received == []

            good_site(site)  # the web team compresses the hero image
            clock.set(start + timedelta(seconds=60))
            await guard.tick()
            clock.set(start + timedelta(seconds=65))
            await guard.tick()
            with ctx.begin() as conn:
                assert pauses.reasons(conn, "news") == []
            released = await ctx.in_thread(engine.holds.release)
            assert released == [run_id]
            result = await engine.execute(run_id)
        finally:
            await guard.close()
            await site.stop()
    assert result is not None and result.status == "done", result
    assert smtp.per_recipient() == {r: 1 for r in RECIPIENTS}
    with ctx.begin() as conn:
        rows = conn.execute(sa.select(check_results.c.outcome, check_results.c.findings)
                            .order_by(check_results.c.id)).all()
    assert [r.outcome for r in rows] == ["fail", "fail", "ok", "ok"]
    failed = rows[0].findings
    assert [p["code"] for p in failed["problems"]] == ["weight", "image_size"]
    assert failed["problems"][0]["value"] > failed["problems"][0]["limit"] == 1_000_000
    assert rows[-1].findings["problems"] == [] and rows[-1].findings["assets_fetched"] == 3
    ctx.db.dispose()


async def test_martech_checks_lists_each_finding(tmp_path: Path, sqlite_url: str) -> None:
    site = await SiteServer().start()
    good_site(site)
    site.add("/app.js", Resource("x" * 5000, "application/javascript", headers=CACHED))
    config_dir = write_config(tmp_path, rows=RECIPIENTS)
    (config_dir / "checks.yaml").write_text(checks_yaml(site.url))
    env = {"MARTECH_CONFIG_DIR": str(config_dir), "MARTECH_DATABASE_URL": sqlite_url,
           "MARTECH_TEMPLATES_DIR": str(tmp_path / "templates")}
    try:
        # CliRunner runs the command's own event loop: run it in a thread, away from ours.
        table = await _invoke(["checks"], env)
        out = await _invoke(["checks", "--json"], env)
    finally:
        await site.stop()
    assert table.exit_code == 1
    assert "1 problem(s)" in table.output
    assert "• script /app.js 5.0 kB sent uncompressed (no gzip/br)" in table.output
    (item,) = json.loads(out.output)
    assert item["type"] == "page" and item["outcome"] == "fail"
    assert item["findings"]["problems"][0]["code"] == "compression"


async def _invoke(args: list[str], env: dict[str, str]) -> Result:
    main = make_cli(build_registry())
    return await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
