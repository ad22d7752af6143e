"""The Prometheus text exposition after the guard has decided: check state and latency per
check, paused and pause-reason gauges per campaign, with the right labels and values."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from jobs.guard.runner import Guard
from scheduler.clock import FakeClock
from scheduler.metrics import render_from_db
from scheduler.store import pauses
from tests.http_server import HttpServer
from tests.test_guard_service import checks_yaml, make_ctx, start_guard, write_config

GUARD_FAMILIES = ("martech_check_", "martech_campaign_")  # the rest: tests/test_metrics_ledger.py


def samples(text: bytes) -> dict[tuple[str, str], float]:
    """(metric name, label value) -> value of the guard's families, from the exposition text
    (parsed, not grepped)."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        if not family.name.startswith(GUARD_FAMILIES):
            continue
        for s in family.samples:
            assert len(s.labels) == 1, s
            out[(s.name, next(iter(s.labels.values())))] = s.value
    return out


async def test_exposition_after_a_check_goes_down_and_pauses_campaigns(
        db: Engine, t0: datetime, tmp_path: Path) -> None:
    web = await HttpServer().start()
    api = await HttpServer().start()
    extra_check = f'  api: {{http: {{url: "{api.url}/health", json_field: {{status: ok}}}}}}\n'
    yaml = checks_yaml(web.url).replace("checks:\n", "checks:\n" + extra_check, 1)
    clock = FakeClock(t0)
    ctx = make_ctx(db, clock, write_config(tmp_path, yaml))
    guard = Guard(ctx)
    try:
        start = await start_guard(guard, clock)
        await guard.tick()
        clock.advance(timedelta(seconds=5))
        await guard.tick()  # two successes each: both up
        await web.stop()
        for i in range(3):  # failure_threshold 3, retry_interval 5 s
            clock.set(start + timedelta(seconds=40 + 5 * i))
            await guard.tick()
        with ctx.begin() as conn:
            pauses.add(conn, "pulse", pauses.MANUAL, clock.now(), detail="copy review")
            text = render_from_db(conn, ["website", "api", "never-ran"],
                                  ["digest", "posts", "pulse"], now=clock.now())
    finally:
        await guard.close()
        await api.stop()
        await web.stop()

    got = samples(text)
    assert got[("martech_check_state", "website")] == 0.0  # down
    assert got[("martech_check_up", "website")] == 0.0
    assert got[("martech_check_state", "api")] == 1.0
    assert got[("martech_check_up", "api")] == 1.0
    assert got[("martech_check_state", "never-ran")] == -2.0  # pending: no verdict yet
    assert ("martech_check_latency_seconds", "never-ran") not in got
    # Latency of each check's latest probe, in seconds.
    for name in ("website", "api"):
        latest = guard.stats.last[name]
        assert got[("martech_check_latency_seconds", name)] == pytest.approx(
            latest.latency_ms / 1000.0)
    assert guard.stats.last["website"].outcome == "fail"
    # digest (tag newsletter) and posts (requires website) are paused by the guard; pulse
    # is not guarded by it but carries a manual pause.
    assert got[("martech_campaign_paused", "digest")] == 1.0
    assert got[("martech_campaign_paused", "posts")] == 1.0
    assert got[("martech_campaign_paused", "pulse")] == 1.0
    assert got[("martech_campaign_pause_reasons", "digest")] == 1.0
    assert got[("martech_campaign_pause_reasons", "pulse")] == 1.0
    # Every guard sample is one of these labelled gauges: nothing unlabelled or unexpected.
    assert {name for name, _ in got} == {
        "martech_check_state", "martech_check_up", "martech_check_latency_seconds",
        "martech_campaign_paused", "martech_campaign_pause_reasons"}
    assert b"# TYPE martech_check_state gauge" in text


async def test_exposition_after_recovery_shows_up_and_resumed(
        db: Engine, t0: datetime, tmp_path: Path) -> None:
    web = await HttpServer().start()
    clock = FakeClock(t0)
    ctx = make_ctx(db, clock, write_config(tmp_path, checks_yaml(web.url)))
    guard = Guard(ctx)
    try:
        start = await start_guard(guard, clock)
        await web.stop()
        for i in range(3):
            clock.set(start + timedelta(seconds=5 * i))
            await guard.tick()
        with ctx.begin() as conn:
            down = samples(render_from_db(conn, ["website"], ["digest"], now=clock.now()))
        await web.start()
        for i in range(2):
            clock.set(start + timedelta(seconds=60 + 5 * i))
            await guard.tick()
        with ctx.begin() as conn:
            up = samples(render_from_db(conn, ["website"], ["digest"], now=clock.now()))
    finally:
        await guard.close()
        await web.stop()
    assert down[("martech_check_state", "website")] == 0.0
    assert down[("martech_campaign_paused", "digest")] == 1.0
    assert up[("martech_check_state", "website")] == 1.0
    assert up[("martech_check_up", "website")] == 1.0
    assert up[("martech_campaign_paused", "digest")] == 0.0
    assert up[("martech_campaign_pause_reasons", "digest")] == 0.0
    assert up[("martech_check_latency_seconds", "website")] == pytest.approx(
        guard.stats.last["website"].latency_ms / 1000.0)
