"""Kill -9 a real ``martech send --now`` mid-campaign, restart, count mail at the server.

ARCHITECTURE.md, invariant 3: nobody is lost; only a row that was mid-transaction at the kill
can be in
doubt — ``unknown`` under at_most_once (never re-sent), re-sent with the same Message-ID under
at_least_once.
"""

from __future__ import annotations

import os
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
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BATCH = 10


def _env(root: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTECH_")}
    env.update({
        "MARTECH_CONFIG_DIR": str(root / "config"),
        "MARTECH_TEMPLATES_DIR": str(root / "templates"),
        "MARTECH_VAR_DIR": str(root / "var"), "MARTECH_DATABASE_URL": f"sqlite:///{root}/m.db",
        "MARTECH_TRANSPORT": "smtp", "MARTECH_SMTP_HOST": "127.0.0.1",
        "MARTECH_SMTP_PORT": str(port), "MARTECH_SMTP_TIMEOUT_S": "2",
        "MARTECH_NODE_NAME": "kill-test", "MARTECH_SECRET_KEY": "k",
        "PYTHONPATH": str(REPO),
    })
    return env


def _start(root: Path, port: int, *, capture: bool = False) -> subprocess.Popen[bytes]:
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "martech", "send", "news", "--now", "--quiet"],
        cwd=root, env=_env(root, port), stdout=out, stderr=subprocess.STDOUT)


def _run_with_kills(root: Path, server: SmtpServer, kill_at: list[int]) -> None:
    for point in kill_at:
        proc = _start(root, server.port)
        deadline = time.monotonic() + 20
        while len(server.received) < point and proc.poll() is None:
            assert time.monotonic() < deadline, "sender made no progress"
            time.sleep(0.005)
        # The kill must land mid-campaign, not after the sender finished on its own.
        assert proc.poll() is None, f"sender finished before kill point {point}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    proc = _start(root, server.port, capture=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()


def _ledger(root: Path) -> dict[str, str]:
    engine = make_engine(f"sqlite:///{root}/m.db")
    with engine.begin() as conn:
        rows = conn.execute(sa.select(deliveries.c.recipient, deliveries.c.status)).all()
    engine.dispose()
    return {r.recipient: r.status for r in rows}


@pytest.mark.parametrize("policy", ["at_most_once", "at_least_once"])
def test_kill_nine_mid_campaign_then_restart(tmp_path: Path, policy: str) -> None:
    recipients = [f"r{i:04d}@example.com" for i in range(240)]
    write_config(tmp_path, rows=recipients,
                 send={"delivery": policy, "batch_size": BATCH, "connections": 2,
                       "rate_per_s": 400})
    kill_at = [15, 50, 95, 140, 190]  # five points spread over the campaign
    with SmtpServer() as server:
        _run_with_kills(tmp_path, server, kill_at)
        counts: Counter[str] = server.per_recipient()
    ledger = _ledger(tmp_path)
    assert set(ledger) == set(recipients)
    assert "pending" not in ledger.values() and "sending" not in ledger.values()
    if policy == "at_most_once":
        assert max(counts.values()) == 1  # nobody mailed twice, ever
        for rcpt, status in ledger.items():
            assert status in ("sent", "unknown")
            if status == "sent":
                assert counts[rcpt] == 1
        # only rows in flight at a kill can be unknown: at most one batch per kill
        assert list(ledger.values()).count("unknown") <= BATCH * len(kill_at)
    else:
        assert set(ledger.values()) == {"sent"}
        assert all(counts[r] >= 1 for r in recipients)  # nobody lost
        doubled = [r for r, n in counts.items() if n > 1]
        assert max(counts.values()) <= 2
        assert len(doubled) <= BATCH * len(kill_at)
