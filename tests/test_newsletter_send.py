"""Newsletter sending end to end against a real aiosmtpd, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.newsletter.http_unsubscribe import record_unsubscribe
from jobs.newsletter.kind import send_run
from jobs.newsletter.probe import probe_once
from scheduler.delivery.tokens import Signer, UnsubscribeRef, verify_click, verify_unsubscribe
from scheduler.store import pauses
from scheduler.store import suppressions as suppression_store
from scheduler.store.tables import deliveries, runs, tracking_events
from tests.newsletter_fixtures import (
    SECRET,
    claim_run,
    context_for,
    settings_for,
    write_config,
)
from tests.smtp_server import RecordingHandler, SmtpServer

RECIPIENTS = [f"user{i}@example.com" for i in range(25)]


def _ledger(ctx, run_id: int) -> dict[str, tuple[str, int, str | None]]:  # type: ignore[no-untyped-def]
    with ctx.begin() as conn:
        rows = conn.execute(sa.select(deliveries.c.recipient, deliveries.c.status,
                                      deliveries.c.attempts, deliveries.c.message_id)
                            .where(deliveries.c.run_id == run_id)).all()
    return {r.recipient: (r.status, r.attempts, r.message_id) for r in rows}


async def test_every_recipient_received_once_with_correct_headers(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=RECIPIENTS)
    with SmtpServer() as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert result.status == "done", result.detail
    assert result.stats["sent"] == 25 and result.stats["total"] == 25
    assert server.per_recipient() == {r: 1 for r in RECIPIENTS}
    ledger = _ledger(ctx, run_id)
    assert {s for s, _a, _m in ledger.values()} == {"sent"}
    signer = Signer(SECRET)
    with ctx.begin() as conn:
        ledger_ids = dict(conn.execute(sa.select(deliveries.c.recipient, deliveries.c.id)
                                       .where(deliveries.c.run_id == run_id)).all())
    for item in server.received:
        msg = item.parsed()
        rcpt = item.rcpt_tos[0]
        index = RECIPIENTS.index(rcpt)
        assert item.mail_from == "news@acme.example"
        assert msg["To"] == rcpt
        assert msg["Subject"] == f"Hello Name{index} — news"
        assert msg["From"] == "Acme News <news@acme.example>"
        assert msg["Message-ID"] == f"<{ledger[rcpt][2]}>"
        assert msg["Precedence"] == "bulk"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        https, mailto = [u.strip(" <>") for u in msg["List-Unsubscribe"].split(",")]
        assert https.startswith("https://mt.acme.example/unsubscribe/")
        assert mailto.startswith("mailto:unsubscribe@acme.example?subject=unsubscribe")
        # The token names the delivery, never the address.
        assert verify_unsubscribe(signer, https.rsplit("/", 1)[1]) == UnsubscribeRef(
            delivery_id=ledger_ids[rcpt])
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert f"Hello Name{index}," in html and 'style="color: #123456;"' in html
        utm = "utm_source=nl&utm_medium=email&utm_campaign=news"
        # Links go through the click redirect (tests/test_tracking.py), signed with the UTM URL.
        click = html.split('href="https://mt.acme.example/c/', 1)[1].split('"', 1)[0]
        assert verify_click(signer, click) == (ledger_ids[rcpt], f"https://acme.example/news?{utm}")
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert f"News (https://acme.example/news?{utm})" in text
    ctx.db.dispose()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_relay_faults_are_classified_retried_and_suppressed(
        tmp_path: Path, db_url: str, t0: datetime, pipelining: bool) -> None:
    handler = RecordingHandler(pipelining=pipelining,
        faults={"always4xx@example.com": "4xx", "policy@example.com": "5xx",
                "ghost@example.com": "hard"},
        fault_once={"flaky@example.com": "4xx", "drop@example.com": "disconnect",
                    "slow@example.com": "slow"},
        slow_s=2.5)
    special = ["always4xx@example.com", "policy@example.com", "ghost@example.com",
               "flaky@example.com", "drop@example.com", "slow@example.com"]
    write_config(tmp_path, rows=[*special, *RECIPIENTS[:5]])
    with SmtpServer(handler) as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port,
                                       smtp_timeout_s=0.5))
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert result.status == "done"
    ledger = _ledger(ctx, run_id)
    assert ledger["always4xx@example.com"][:2] == ("failed", 3)  # max_attempts
    assert ledger["policy@example.com"][:2] == ("failed", 1)  # 5xx: never retried
    assert ledger["ghost@example.com"][:2] == ("bounced", 1)
    assert ledger["flaky@example.com"][:2] == ("sent", 2)
    # The link dropped (or the reply timed out) after the end of DATA: the relay may have the
    # message, so at_most_once never retries it (issue 9, point 2; tests/test_newsletter_wire.py
    # has both policies against a relay that does and one that does not store it).
    assert ledger["drop@example.com"][:2] == ("unknown", 1)
    assert ledger["slow@example.com"][:2] == ("unknown", 1)
    counts = server.per_recipient()
    assert counts["flaky@example.com"] == 1
    assert "drop@example.com" not in counts and "slow@example.com" not in counts
    assert "policy@example.com" not in counts and "ghost@example.com" not in counts
    assert all(counts[r] == 1 for r in RECIPIENTS[:5])
    assert result.stats["bounced"] == 1 and result.stats["failed"] == 2
    assert result.stats["unknown"] == 2
    with ctx.begin() as conn:
        assert suppression_store.reason_of(conn, "ghost@example.com") == "hard_bounce"
        kinds = sorted(r.kind for r in conn.execute(
            sa.select(tracking_events.c.kind).where(tracking_events.c.run_id == run_id)))
    assert kinds == ["bounced", "failed", "failed"]
    ctx.db.dispose()


async def test_invalid_duplicate_and_suppressed_rows_are_skipped_and_counted(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    csv_text = ("email,first_name\n a@example.com ,A\nnot-an-address,X\nA@EXAMPLE.COM,dup\n"
                "gone@example.com,G\nb@example.com,B\n,empty\nc@@example.com,C\n")
    write_config(tmp_path, csv_text=csv_text)
    with SmtpServer() as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        with ctx.begin() as conn:
            suppression_store.add(conn, "Gone@example.com", "unsubscribed", t0)
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    s = result.stats
    assert (s["audience_rows"], s["invalid"], s["duplicates"], s["suppressed"], s["sent"]) == \
        (7, 3, 1, 1, 2)
    assert server.per_recipient() == {"a@example.com": 1, "b@example.com": 1}
    assert _ledger(ctx, run_id)["gone@example.com"][0] == "suppressed"
    ctx.db.dispose()


async def test_error_budget_pauses_the_campaign(tmp_path: Path, db_url: str,
                                                t0: datetime) -> None:
    bad = [f"bad{i}@example.com" for i in range(40)]
    handler = RecordingHandler(faults={b: "5xx" for b in bad})
    write_config(tmp_path, rows=bad, budget={"window": 10, "max_failure_ratio": 0.5})
    with SmtpServer(handler) as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert result.status == "held"
    with ctx.begin() as conn:
        assert [p.reason for p in pauses.reasons(conn, "news")] == [pauses.ERROR_BUDGET]
    # Stopped after the first batch that filled the window: the rest is still pending.
    statuses = [s for s, _a, _m in _ledger(ctx, run_id).values()]
    assert statuses.count("failed") == 10 and statuses.count("pending") == 30
    ctx.db.dispose()


async def test_unreachable_relay_pauses_without_burning_the_list(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=RECIPIENTS[:12])
    with SmtpServer() as dead:
        dead_port = dead.port
    ctx = context_for(settings_for(tmp_path, db_url, port=dead_port))
    run_id = claim_run(ctx, t0)
    result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert result.status == "held"
    assert set(_ledger(ctx, run_id).values()) == {("pending", 0, v[2])
                                                  for v in _ledger(ctx, run_id).values()}
    with ctx.begin() as conn:
        assert [p.reason for p in pauses.reasons(conn, "news")] == [pauses.SMTP_UNREACHABLE]
    assert await probe_once(ctx) == []  # still down: the pause stays
    with SmtpServer() as server:
        ctx.settings = settings_for(tmp_path, db_url, port=server.port)
        assert await probe_once(ctx) == ["news"]
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert result.status == "done"
    assert server.per_recipient() == {r: 1 for r in RECIPIENTS[:12]}
    ctx.db.dispose()


async def test_manual_pause_stops_within_one_batch_and_resume_continues(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    write_config(tmp_path, rows=RECIPIENTS)
    with SmtpServer() as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        run_id = claim_run(ctx, t0)
        batches: list[int] = []

        def on_progress(p) -> None:  # type: ignore[no-untyped-def]
            batches.append(p.done)
            if p.done and len(batches) == 2:  # after the first batch: a marketer pauses
                with ctx.begin() as conn:
                    pauses.add(conn, "news", pauses.MANUAL, t0, detail="hold on")

        held = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return",
                              progress=on_progress)
        assert held.status == "held"
        assert len(server.received) == 10  # one batch
        with ctx.begin() as conn:
            pauses.remove(conn, "news", pauses.MANUAL, t0)
        done = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
    assert done.status == "done"
    assert server.per_recipient() == {r: 1 for r in RECIPIENTS}
    ctx.db.dispose()


async def test_crash_leftovers_follow_the_delivery_policy(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    for policy, expect in (("at_most_once", "unknown"), ("at_least_once", "sent")):
        root = tmp_path / policy
        write_config(root, rows=RECIPIENTS[:6], send={"delivery": policy})
        with SmtpServer() as server:
            ctx = context_for(settings_for(root, db_url, port=server.port))
            run_id = claim_run(ctx, t0 + timedelta(minutes=len(policy)))
            ctx.stopping.set()  # materialise only, then "crash" with two rows mid-send
            await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
            with ctx.begin() as conn:
                conn.execute(sa.update(deliveries).where(
                    deliveries.c.run_id == run_id,
                    deliveries.c.recipient.in_(RECIPIENTS[:2])).values(status="sending",
                                                                        attempts=1))
            ctx.stopping.clear()
            result = await send_run(ctx, ctx.config.campaigns["news"], run_id,
                                    on_pause="return")
        ledger = _ledger(ctx, run_id)
        assert result.status == "done"
        assert [ledger[r][0] for r in RECIPIENTS[:2]] == [expect, expect]
        assert result.stats["unknown"] == (2 if policy == "at_most_once" else 0)
        expected_at_server = {r: 1 for r in RECIPIENTS[2:6]}
        if policy == "at_least_once":
            expected_at_server.update({r: 1 for r in RECIPIENTS[:2]})
            ids = {item.parsed()["Message-ID"] for item in server.received}
            assert {f"<{ledger[r][2]}>" for r in RECIPIENTS[:2]} <= ids
        assert server.per_recipient() == expected_at_server
        with ctx.begin() as conn:
            assert conn.execute(sa.select(runs.c.stats).where(runs.c.id == run_id)).scalar()
        ctx.db.dispose()


async def test_unsubscribed_since_materialisation_is_never_claimed(
        tmp_path: Path, db_url: str, t0: datetime) -> None:
    """Issue 9, point 3: the claim checks the suppression list, so an unsubscribe (here the
    function the one-click POST calls) during a send stops that address's mail within one
    batch; one made while the campaign is paused is honoured when it resumes."""
    write_config(tmp_path, rows=RECIPIENTS)
    with SmtpServer() as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        run_id = claim_run(ctx, t0)
        during, paused_out = RECIPIENTS[20:23], RECIPIENTS[24]
        marks: list[int] = []

        def on_progress(p) -> None:  # type: ignore[no-untyped-def]
            if p.done and not marks:  # after the first batch of 10
                marks.append(p.done)
                with ctx.begin() as conn:
                    for rcpt in [*during, RECIPIENTS[0]]:  # RECIPIENTS[0] was already sent
                        record_unsubscribe(conn, "news", rcpt, t0)
            elif p.done >= 20 and len(marks) == 1:  # after the second: a pause
                marks.append(p.done)
                with ctx.begin() as conn:
                    pauses.add(conn, "news", pauses.MANUAL, t0)

        held = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return",
                              progress=on_progress)
        assert held.status == "held"
        with ctx.begin() as conn:
            record_unsubscribe(conn, "news", paused_out, t0)
            pauses.remove(conn, "news", pauses.MANUAL, t0)
        done = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        received = server.per_recipient()
    assert done.status == "done"
    gone = {*during, paused_out}
    assert received == {r: 1 for r in RECIPIENTS if r not in gone}
    ledger = _ledger(ctx, run_id)
    assert {ledger[r][0] for r in gone} == {"suppressed"} and ledger[RECIPIENTS[0]][0] == "sent"
    assert {ledger[r][1] for r in gone} == {0}  # never claimed, never attempted
    assert done.stats["suppressed"] == 4 and done.stats["sent"] == 21
    ctx.db.dispose()
