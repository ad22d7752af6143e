"""Kill -9 a real ``martech send --now`` at random moments mid-campaign, restart, count mail at
the server — on SQLite and PostgreSQL.

ARCHITECTURE.md, invariant 3; issue 9, point 1: nobody is lost, and only a message whose end of
DATA may have been written and whose reply was not recorded is in doubt — at most 2 x
connections rows per kill (the window of ``jobs/newsletter/wire.py``), however big the batch:
``unknown`` under at_most_once (never re-sent), re-sent with the same Message-ID under
at_least_once. Every other claimed row goes back to ``pending`` and is sent once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler.store.db import make_engine
from scheduler.store.tables import deliveries
from tests.newsletter_fixtures import write_config
from tests.smtp_server import RecordingHandler, SmtpServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BATCH = 50  # much bigger than the window: a kill must not make a whole batch ambiguous
CONNECTIONS = 4
WINDOW = 2 * CONNECTIONS
KILLS = 5
TOTAL = 400


def _env(root: Path, port: int, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTECH_")}
    env.update({
        "MARTECH_CONFIG_DIR": str(root / "config"),
        "MARTECH_TEMPLATES_DIR": str(root / "templates"),
        "MARTECH_VAR_DIR": str(root / "var"), "MARTECH_DATABASE_URL": db_url,
        "MARTECH_TRANSPORT": "smtp", "MARTECH_SMTP_HOST": "127.0.0.1",
        "MARTECH_SMTP_PORT": str(port), "MARTECH_SMTP_TIMEOUT_S": "2",
        "MARTECH_NODE_NAME": "kill-test", "MARTECH_SECRET_KEY": "k",
        "PYTHONPATH": str(REPO),
    })
    return env


def _start(root: Path, port: int, db_url: str, *, capture: bool = False
           ) -> subprocess.Popen[bytes]:
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "martech", "send", "news", "--now", "--quiet"],
        cwd=root, env=_env(root, port, db_url), stdout=out, stderr=subprocess.STDOUT)


def _on_wire(db_url: str) -> set[str]:
    """Rows a dead sender left in doubt: claimed, content possibly written, no outcome."""
    engine = make_engine(db_url)
    with engine.begin() as conn:
        rows = conn.execute(sa.select(deliveries.c.recipient).where(
            deliveries.c.status == "sending", deliveries.c.on_wire.is_(True))).scalars().all()
    engine.dispose()
    return set(rows)


def _run_with_kills(root: Path, server: SmtpServer, db_url: str, kill_at: list[int]
                    ) -> list[set[str]]:
    in_doubt = []
    for point in kill_at:
        proc = _start(root, server.port, db_url)
        deadline = time.monotonic() + 30
        while len(server.received) < point and proc.poll() is None:
            assert time.monotonic() < deadline, "sender made no progress"
            time.sleep(0.002)  # watching a real process, not moving time
        # The kill must land mid-campaign, not after the sender finished on its own.
        assert proc.poll() is None, f"sender finished before kill point {point}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        in_doubt.append(_on_wire(db_url))
    proc = _start(root, server.port, db_url, capture=True)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out.decode()
    return in_doubt


def _ledger(db_url: str) -> dict[str, tuple[str, str]]:
    engine = make_engine(db_url)
    with engine.begin() as conn:
        rows = conn.execute(sa.select(deliveries.c.recipient, deliveries.c.status,
                                      deliveries.c.message_id)).all()
    engine.dispose()
    return {r.recipient: (r.status, r.message_id) for r in rows}


@pytest.mark.parametrize("policy", ["at_most_once", "at_least_once"])
def test_kill_nine_at_random_moments_then_restart(tmp_path: Path, db_url: str,
                                                  policy: str) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    recipients = [f"r{i:04d}@example.com" for i in range(TOTAL)]
    # 5% of the list meets a transient 4xx once, as a real relay under load would answer.
    flaky = {r: "4xx" for r in rng.sample(recipients, TOTAL // 20)}
    write_config(tmp_path, rows=recipients,
                 send={"delivery": policy, "batch_size": BATCH, "connections": CONNECTIONS,
                       "rate_per_s": 500})
    kill_at = sorted(rng.sample(range(TOTAL // 20, TOTAL * 4 // 5), KILLS))
    with SmtpServer(RecordingHandler(fault_once=flaky)) as server:
        in_doubt = _run_with_kills(tmp_path, server, db_url, kill_at)
        received = server.received
    note = f"seed {seed}, kills at {kill_at}, in doubt per kill {[len(d) for d in in_doubt]}"
    counts: Counter[str] = Counter(r for item in received for r in item.rcpt_tos)
    ledger = _ledger(db_url)
    assert set(ledger) == set(recipients)
    statuses = {s for s, _m in ledger.values()}
    assert not statuses & {"pending", "sending"}, note
    assert all(len(doubt) <= WINDOW for doubt in in_doubt), note  # per kill, not per batch
    doubted = set().union(*in_doubt)
    if policy == "at_most_once":
        assert max(counts.values()) == 1, note  # nobody mailed twice, ever
        unknown = {r for r, (s, _m) in ledger.items() if s == "unknown"}
        assert unknown == doubted, note  # exactly the rows on the wire at a kill
        assert statuses <= {"sent", "unknown"}, note
        assert all(counts[r] == 1 for r, (s, _m) in ledger.items() if s == "sent"), note
    else:
        assert statuses == {"sent"}, note
        assert all(counts[r] >= 1 for r in recipients), note  # nobody lost
        doubled = {r for r, n in counts.items() if n > 1}
        assert doubled <= doubted, note  # duplicates only where a kill left doubt
        for item in received:  # ... and always with the row's one Message-ID
            assert item.parsed()["Message-ID"] == f"<{ledger[item.rcpt_tos[0]][1]}>"
