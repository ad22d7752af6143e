"""Reviewer findings on the delivery ledger, as regression tests (ARCHITECTURE.md, invariants 3
and 8).

A database blip while recording a batch must not lose its outcomes; a second sender on the same
run must never re-queue another live sender's in-flight batch (who may adopt a claim is tested in
tests/test_delivery_leases.py); a run abandoned by the engine leaves no pending row behind; SQL
audiences time out instead of hanging a run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobs.newsletter import ledger
from jobs.newsletter.audiences import AudienceError, AudienceStats, iter_audience
from jobs.newsletter.config import AudienceConfig
from jobs.newsletter.kind import TRANSPORT_OVERRIDE, NewsletterJob, send_run
from scheduler.delivery.base import OutgoingMessage, SendOutcome
from scheduler.store import heartbeats
from scheduler.store import runs as run_store
from scheduler.store.tables import deliveries, node_heartbeats
from tests.conftest import PG_URL
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
from tests.smtp_server import SmtpServer

RECIPIENTS = [f"u{i}@example.com" for i in range(30)]


def _statuses(ctx: Any, run_id: int) -> dict[str, str]:
    with ctx.begin() as conn:
        return ledger.per_recipient(conn, run_id)


def _db_down() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("UPDATE deliveries", {}, Exception("database is locked"))


# -- 1. a DB error while recording a batch ---------------------------------------------------

async def test_db_blip_while_recording_a_batch_loses_no_outcome(
        tmp_path: Path, db_url: str, t0: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, rows=RECIPIENTS)
    calls = {"n": 0}
    real = ledger.settle
    seen: list[list[int]] = []

    def flaky(conn: sa.Connection, token: int, **kw: Any) -> int:
        calls["n"] += 1
        seen.append(sorted(kw["sent"]))
        if calls["n"] == 3:  # the third group commit fails once (outcomes in it)
            raise _db_down()
        return real(conn, token, **kw)

    monkeypatch.setattr(ledger, "settle", flaky)
    with SmtpServer() as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        assert result.status == "done", result.detail
        assert server.per_recipient() == {r: 1 for r in RECIPIENTS}
    assert set(_statuses(ctx, run_id).values()) == {"sent"}
    assert result.stats["sent"] == 30 and result.stats["pending"] == 0  # counted once
    # The failed commit's outcomes were retried (with any that arrived meanwhile), not lost.
    assert seen[2] and set(seen[2]) <= set(seen[3])
    ctx.db.dispose()


@pytest.mark.parametrize("policy,expect", [("at_least_once", "sent"),
                                           ("at_most_once", "unknown")])
async def test_db_down_while_recording_raises_and_rerun_resolves_by_policy(
        tmp_path: Path, db_url: str, t0: datetime, monkeypatch: pytest.MonkeyPatch,
        policy: str, expect: str) -> None:
    write_config(tmp_path, rows=RECIPIENTS[:20], send={"delivery": policy})
    monkeypatch.setattr("jobs.newsletter.wire.RECORD_RETRY_DELAYS_S", (0.0, 0.01))
    real = ledger.settle
    calls = {"n": 0}

    def down(conn: sa.Connection, token: int, **kw: Any) -> int:
        if not kw["sent"]:  # the first marks go through: messages cross
            return real(conn, token, **kw)
        calls["n"] += 1  # every commit with an outcome in it fails
        raise _db_down()

    with SmtpServer() as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        run_id = claim_run(ctx, t0)
        monkeypatch.setattr(ledger, "settle", down)
        with pytest.raises(sa.exc.OperationalError):  # the engine re-spawns the run
            await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        assert calls["n"] == 3  # first try + two retries, then give up
        with ctx.begin() as conn:
            claimed = {r.recipient: r.on_wire for r in conn.execute(
                sa.select(deliveries.c.recipient, deliveries.c.on_wire).where(
                    deliveries.c.run_id == run_id, deliveries.c.status == "sending"))}
        # Only the first batch was claimed; of it, only rows marked on the wire can have gone
        # out, and no more of them than the window (2 x 3 connections).
        assert set(claimed) == set(RECIPIENTS[:10])
        in_doubt = {r for r, on_wire in claimed.items() if on_wire}
        assert 1 <= len(in_doubt) <= 6
        before = server.per_recipient()
        assert set(before) <= in_doubt
        monkeypatch.setattr(ledger, "settle", real)
        # Same process: the failed batch's claim was given up, so it is adopted at once.
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        received = server.per_recipient()
    assert result.status == "done"
    statuses = _statuses(ctx, run_id)
    assert {statuses[r] for r in in_doubt} == {expect}
    assert {statuses[r] for r in RECIPIENTS[:20] if r not in in_doubt} == {"sent"}
    extra = 1 if policy == "at_least_once" else 0  # re-sent with the same Message-ID
    assert received == {r: before.get(r, 0) + (extra if r in in_doubt else 1)
                        for r in RECIPIENTS[:20] if before.get(r, 0) or r not in in_doubt
                        or extra}
    ctx.db.dispose()


# -- 2. a second sender on the same run ------------------------------------------------------

class SlowFirst:
    """The first message blocks until ``gate`` opens, so its batch stays ``sending``."""

    name = "slow"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.sent: Counter[str] = Counter()

    async def send(self, message: OutgoingMessage) -> SendOutcome:
        first = not self.sent
        self.sent[message.recipients[0]] += 1
        if first:
            await self.gate.wait()
        return SendOutcome(ok=True, code=250)

    async def close(self) -> None: ...


@pytest.mark.parametrize("second", ["same-node", "other-node", "cli"])
async def test_second_sender_on_same_run_resends_inflight_rows(
        tmp_path: Path, db_url: str, t0: datetime, second: str) -> None:
    """Two senders on one run (PG held-release race, or `martech send --now` picking up the
    service's running manual run): the newcomer must not re-queue the other's in-flight batch.
    """
    write_config(tmp_path, rows=RECIPIENTS[:20], send={"delivery": "at_least_once"})
    transport = SlowFirst()
    a_ctx = context_for(settings_for(tmp_path, db_url, transport="file"))
    b_ctx = a_ctx
    if second != "same-node":
        from jobs.newsletter import claims

        node = "node-b" if second == "other-node" else claims.cli_node_name("test-node")
        b_ctx = context_for(settings_for(tmp_path, db_url, transport="file", node_name=node))
    for ctx in {id(a_ctx): a_ctx, id(b_ctx): b_ctx}.values():
        ctx.extras[TRANSPORT_OVERRIDE] = transport
    run_id = claim_run(a_ctx, t0)
    camp = a_ctx.config.campaigns["news"]
    a = asyncio.create_task(send_run(a_ctx, camp, run_id, on_pause="return"))
    while not transport.sent:  # A's first batch is in flight
        await asyncio.sleep(0.01)
    asyncio.get_running_loop().call_later(0.5, transport.gate.set)
    b = await asyncio.wait_for(send_run(b_ctx, camp, run_id, on_pause="return"), 10)
    assert transport.gate.is_set(), "B finished while A's batch was still in flight"
    assert (await a).status == "done" and b.status == "done"
    assert transport.sent == {r: 1 for r in RECIPIENTS[:20]}  # nobody twice
    assert set(_statuses(a_ctx, run_id).values()) == {"sent"}
    for ctx in {id(a_ctx): a_ctx, id(b_ctx): b_ctx}.values():
        ctx.db.dispose()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_cli_send_uses_its_own_node_name_and_heartbeats(
        tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service must see a live `send --now` as someone else's, alive (not adopt it)."""
    from rich.console import Console

    from jobs.newsletter.send_cli import run_send
    from martech.compose import load_config
    from scheduler.context import ServiceContext
    from scheduler.store.db import make_engine, upgrade

    write_config(tmp_path, rows=RECIPIENTS[:20])
    settings = settings_for(tmp_path, sqlite_url, transport="file")
    engine = make_engine(sqlite_url)
    upgrade(engine)
    killed, elsewhere = f"test-node:cli:{_dead_pid()}", f"other-host:cli:{_dead_pid()}"
    with engine.begin() as conn:  # a CLI killed here earlier; one on another host
        for name in (killed, elsewhere):
            heartbeats.beat(conn, name, "sender", datetime(2026, 1, 1, tzinfo=UTC))
    seen: list[tuple[str | None, list[str]]] = []

    class State:
        def __init__(self) -> None:
            self.settings = settings

        def db(self) -> sa.Engine:
            return make_engine(sqlite_url)

    class Probe:  # looks at the database while the CLI's first batch is in flight
        name = "probe"

        async def send(self, message: OutgoingMessage) -> SendOutcome:
            if not seen:
                with engine.begin() as conn:
                    run = run_store.by_status(conn, ["running"])[0]
                    beats = sorted(conn.execute(sa.select(node_heartbeats.c.node)).scalars())
                seen.append((run.node, beats))
            return SendOutcome(ok=True, code=250)

        async def close(self) -> None: ...

    config = load_config(settings.config_dir)
    original = ServiceContext

    def with_probe(*args: Any, **kw: Any) -> ServiceContext:
        ctx = original(*args, **kw)
        ctx.extras[TRANSPORT_OVERRIDE] = Probe()
        return ctx

    monkeypatch.setattr("jobs.newsletter.send_cli.ServiceContext", with_probe)
    code = await run_send(State(), config, config.campaigns["news"], quiet=True,
                          console=Console(quiet=True), signals=(), clock_s=lambda: 0.0)
    expected = f"test-node:cli:{os.getpid()}"
    assert code == 0
    assert seen == [(expected, sorted([elsewhere, expected]))]
    with engine.begin() as conn:  # its heartbeat row goes with it; the killed one's is pruned
        assert conn.execute(sa.select(node_heartbeats.c.node)).scalars().all() == [elsewhere]
    engine.dispose()


# -- 3. a run abandoned by the engine (skipped past max_delay, missed) ------------------------

async def test_on_abandoned_skips_the_pending_rows(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=RECIPIENTS[:6])
    ctx = context_for(settings_for(tmp_path, db_url))
    run_id = claim_run(ctx, t0)
    ctx.stopping.set()  # materialise only
    await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    with ctx.begin() as conn:
        conn.execute(sa.update(deliveries).where(deliveries.c.recipient == RECIPIENTS[0])
                     .values(status="sent"))
        run = run_store.get(conn, run_id)
    assert run is not None
    reason = "skipped: held past max delay 1 day, 0:00:00"
    await NewsletterJob().on_abandoned(ctx, ctx.config.campaigns["news"], run, reason)
    with ctx.begin() as conn:
        rows = conn.execute(sa.select(deliveries.c.recipient, deliveries.c.status,
                                      deliveries.c.last_error)
                            .where(deliveries.c.run_id == run_id)).all()
    assert {r.recipient: (r.status, r.last_error) for r in rows} == {
        RECIPIENTS[0]: ("sent", None), **{r: ("skipped", reason) for r in RECIPIENTS[1:6]}}
    ctx.db.dispose()


# -- 4. SQL audiences time out ---------------------------------------------------------------

def test_sql_audience_engine_options_carry_timeouts() -> None:
    from jobs.newsletter.audiences import engine_options

    pg = engine_options("postgresql+psycopg://u@db.example/crm?options=-csearch_path%3Dcrm",
                        statement_timeout_s=2.5)
    assert pg["pool_timeout"] > 0
    assert pg["connect_args"]["connect_timeout"] > 0
    assert pg["connect_args"]["options"] == "-csearch_path=crm -c statement_timeout=2500"
    lite = engine_options("sqlite:///crm.db", statement_timeout_s=2.5)
    assert lite["connect_args"] == {"timeout": 2.5}


@pytest.mark.skipif(not PG_URL, reason="MARTECH_TEST_DATABASE_URL is not set")
def test_slow_sql_audience_fails_with_a_clear_timeout_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert PG_URL
    monkeypatch.setattr("jobs.newsletter.audiences.SQL_STATEMENT_TIMEOUT_S", 0.3)
    audience = AudienceConfig(sql="SELECT 'a@x.example' AS email, pg_sleep(5) AS slow",
                              database=PG_URL)
    started = time.monotonic()
    with pytest.raises(AudienceError, match=r"statement timeout \(0\.3 s\)"):
        list(iter_audience(audience, None, tmp_path, AudienceStats()))
    assert time.monotonic() - started < 4  # cancelled by the server, not after pg_sleep's 5 s
