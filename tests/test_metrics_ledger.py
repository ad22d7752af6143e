"""/metrics after a real send, scraped from the HTTP app on port 0: the message counts are the
ledger's, per campaign and outcome; pending, lateness, outbox, heartbeats and HTTP requests
are there with bounded labels; and the sample alert rules and dashboard only use metrics
that exist."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families

from jobs.newsletter.kind import send_run
from martech.compose import build_registry
from scheduler.clock import FakeClock
from scheduler.http_app import run_http_app
from scheduler.store import heartbeats
from scheduler.store import outbox as outbox_store
from scheduler.store import runs as run_store
from scheduler.store.db import upgrade
from scheduler.store.runs import Claim
from scheduler.store.tables import deliveries, runs
from tests.conftest import REPO
from tests.newsletter_fixtures import context_for, settings_for, write_config
from tests.smtp_server import RecordingHandler, SmtpServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scrape(port: int, path: str = "/metrics") -> str:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return await resp.text()


async def wait_port(ctx) -> int:  # type: ignore[no-untyped-def]
    for _ in range(400):
        if "http_port" in ctx.extras:
            return int(ctx.extras["http_port"])
        await asyncio.sleep(0.005)
    raise AssertionError("http app did not start")


async def test_metrics_after_a_send_match_the_ledger(tmp_path: Path, db_url: str,
                                                     t0: datetime) -> None:
    handler = RecordingHandler(faults={"policy@example.com": "5xx", "ghost@example.com": "hard"})
    rows = [f"r{i}@example.com" for i in range(7)] + ["policy@example.com", "ghost@example.com"]
    write_config(tmp_path, rows=rows)
    clock = FakeClock(t0)
    with SmtpServer(handler) as smtp:
        ctx = context_for(settings_for(tmp_path, db_url, port=smtp.port))
        ctx.clock = clock
        with ctx.begin() as conn:
            claim = Claim("news", "news", "newsletter", t0 - timedelta(seconds=42),
                          "2026-11-23T08:59:18")
            run_id = run_store.claim(conn, [claim], ctx.node, t0)[("news", claim.scheduled_at)]
            run_store.set_status(conn, run_id, "running", t0)
            heartbeats.beat(conn, ctx.node, "service", t0 - timedelta(seconds=5))
            heartbeats.beat(conn, f"{ctx.node}:cli:4242", "sender", t0)  # no label for a pid
            outbox_store.enqueue(conn, topic="reminder", channel="webhook",
                                 target="http://127.0.0.1:9/h", payload={"text": "x"},
                                 now=t0 - timedelta(minutes=3))
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        with ctx.begin() as conn:
            run_store.set_status(conn, run_id, result.status, clock.now(), stats=result.stats)
    assert result.status == "done"
    with ctx.begin() as conn:
        ledger: dict[str, int] = {status: n for status, n in conn.execute(
            sa.select(deliveries.c.status, sa.func.count())
            .where(deliveries.c.run_id == run_id).group_by(deliveries.c.status))}
    assert ledger == {"sent": 7, "failed": 1, "bounced": 1}

    server = asyncio.create_task(run_http_app(ctx, build_registry().http_routes))
    try:
        port = await wait_port(ctx)
        first = parse(await scrape(port))
        clock.advance(timedelta(minutes=5))  # the run is now settled: its counts are cached
        await scrape(port, "/no-such-page")
        await scrape(port, "/unsubscribe/not-a-token")
        second_text = await scrape(port)
        second = parse(second_text)
    finally:
        ctx.stopping.set()
        await server
    for samples in (first, second):
        for status in ("sent", "failed", "bounced", "unknown"):
            assert value(samples, "martech_messages_total", campaign="news",
                         status=status) == ledger.get(status, 0)
        assert value(samples, "martech_runs_total", campaign="news", kind="newsletter",
                     status="done") == 1
        assert value(samples, "martech_run_lateness_seconds_count") == 1
        assert value(samples, "martech_run_lateness_seconds_sum") == 42
        assert value(samples, "martech_run_lateness_seconds_bucket", le="60.0") == 1
        assert value(samples, "martech_run_lateness_seconds_bucket", le="15.0") == 0
        assert value(samples, "martech_run_last_lateness_seconds", campaign="news") == 42
        assert value(samples, "martech_outbox_pending", topic="reminder") == 1
        assert value(samples, "martech_outbox_messages_total", topic="reminder",
                     channel="webhook", status="pending") == 1
    assert value(first, "martech_send_rate_per_second", campaign="news") == 7 / 60  # 7 sent
    assert value(first, "martech_outbox_oldest_pending_age_seconds", topic="reminder") == 180
    assert value(first, "martech_node_heartbeat_age_seconds", node=ctx.node, role="service") == 5
    assert value(second, "martech_node_heartbeat_age_seconds", node=ctx.node,
                 role="service") == 305
    assert not any(dict(labels).get("role") == "sender" for _n, labels in second)
    assert value(second, "martech_http_requests_total", route="/metrics", method="GET",
                 status="200") == 1  # the first scrape, counted before the second one's
    assert value(second, "martech_http_requests_total", route="unmatched", method="GET",
                 status="404") == 1
    routes = {dict(labels)["route"] for name, labels in second
              if name == "martech_http_requests_total"}
    assert "/unsubscribe/{token}" in routes and "/unsubscribe/not-a-token" not in routes
    # No recipient ever becomes a label.
    assert "@example.com" not in second_text
    with ctx.begin() as conn:
        assert conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).scalar() == "done"
    ctx.db.dispose()


def _metric_names(exprs: list[str]) -> set[str]:
    names = set()
    for expr in exprs:
        names |= set(re.findall(r"\bmartech_[a-z_]+", expr))
    return names


async def test_sample_alert_rules_and_dashboard_use_only_metrics_that_exist(
        tmp_path: Path, sqlite_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=["a@example.com"])
    (tmp_path / "config" / "checks.yaml").write_text(
        "checks:\n  landing: {page: {url: 'http://127.0.0.1:9/'}}\n")
    ctx = context_for(settings_for(tmp_path, sqlite_url, port=1))
    upgrade(ctx.db)
    ctx.clock = FakeClock(t0)
    server = asyncio.create_task(run_http_app(ctx, []))
    try:
        port = await wait_port(ctx)
        await scrape(port, "/healthz")
        exposed = {family.name for family in text_string_to_metric_families(await scrape(port))}
    finally:
        ctx.stopping.set()
        await server
    ctx.db.dispose()
    # Counters are exposed as <name>_total, histograms as _bucket/_sum/_count.
    known = exposed | {f"{n}_total" for n in exposed} | {
        f"{n}_{suffix}" for n in exposed for suffix in ("bucket", "sum", "count")}
    rules = yaml.safe_load((REPO / "docs" / "prometheus-alerts.yml").read_text())
    alert_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(alert_exprs) >= 10 and all(r.get("alert") for g in rules["groups"]
                                          for r in g["rules"])
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    panel_exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = _metric_names(alert_exprs) | _metric_names(panel_exprs)
    assert used - known == set(), f"not exposed: {sorted(used - known)}"
    assert {"martech_messages_total", "martech_deliveries_pending", "martech_outbox_pending",
            "martech_http_requests_total", "martech_node_heartbeat_age_seconds",
            "martech_run_lateness_seconds_bucket"} <= used
