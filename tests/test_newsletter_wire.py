"""at_most_once means at most once (issue 9, point 2), against relays that fail on purpose.

After the end of DATA a dropped link leaves the message in doubt — the relay may have stored it
("store_drop" does, "disconnect" does not; the client cannot tell them apart): at_most_once
records ``unknown`` and never retries, at_least_once re-sends with the same Message-ID. A link
dropped before any data ("drop_rcpt") is a plain retry under both.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobs.newsletter.kind import send_run
from scheduler.store.tables import deliveries
from tests.newsletter_fixtures import claim_run, context_for, settings_for, write_config
from tests.smtp_server import RecordingHandler, SmtpServer

STORED, LOST, EARLY = "stored@example.com", "lost@example.com", "early@example.com"
OTHERS = [f"ok{i}@example.com" for i in range(6)]

# policy -> recipient -> (final status, attempts, copies at the relay)
EXPECTED = {
    "at_most_once": {STORED: ("unknown", 1, 1), LOST: ("unknown", 1, 0), EARLY: ("sent", 2, 1)},
    "at_least_once": {STORED: ("sent", 2, 2), LOST: ("sent", 2, 1), EARLY: ("sent", 2, 1)},
}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
@pytest.mark.parametrize("policy", ["at_most_once", "at_least_once"])
async def test_a_drop_after_the_end_of_data_follows_the_policy(
        tmp_path: Path, db_url: str, t0: datetime, policy: str, pipelining: bool) -> None:
    handler = RecordingHandler(pipelining=pipelining, fault_once={
        STORED: "store_drop", LOST: "disconnect", EARLY: "drop_rcpt"})
    write_config(tmp_path, rows=[STORED, LOST, EARLY, *OTHERS],
                 send={"delivery": policy, "connections": 2})
    with SmtpServer(handler) as server:
        ctx = context_for(settings_for(tmp_path, db_url, port=server.port))
        run_id = claim_run(ctx, t0)
        result = await send_run(ctx, ctx.config.campaigns["news"], run_id, on_pause="return")
        received = server.received
    assert result.status == "done", result.detail
    with ctx.begin() as conn:
        ledger = {r.recipient: r for r in conn.execute(
            sa.select(deliveries).where(deliveries.c.run_id == run_id))}
    counts = {r: sum(r in item.rcpt_tos for item in received) for r in ledger}
    for rcpt, (status, attempts, copies) in EXPECTED[policy].items():
        assert (ledger[rcpt].status, ledger[rcpt].attempts, counts[rcpt]) == \
            (status, attempts, copies), rcpt
    assert all(ledger[r].status == "sent" and counts[r] == 1 for r in OTHERS)
    # Every copy of a message carries the row's one Message-ID, on every attempt.
    for item in received:
        assert item.parsed()["Message-ID"] == f"<{ledger[item.rcpt_tos[0]].message_id}>"
    assert result.stats["unknown"] == (2 if policy == "at_most_once" else 0)
    if policy == "at_most_once":
        assert "not re-sent" in (ledger[STORED].last_error or "")
    ctx.db.dispose()
