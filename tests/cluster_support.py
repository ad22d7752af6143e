"""Several real ``martech run`` nodes on one database, for the multi-node tests (issue 9).

Every node is a subprocess started as a user would (``python -m martech run``), with a node name
of its own, sharing the config directory and the database; its output goes to a log file the
test reads. The campaign falls due a few seconds after the nodes start, so they race for it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from scheduler.store import runs as run_store
from scheduler.store.db import make_engine
from scheduler.store.tables import deliveries, delivery_claims, runs
from tests.newsletter_fixtures import write_config

REPO = Path(__file__).resolve().parent.parent
SECRET = "cluster-test-secret"
# Processes per node (MARTECH_WORKERS), fixed so the default (the cores, on PostgreSQL) does not
# vary with the machine; MARTECH_TEST_WORKERS=2 runs every cluster test with worker processes.
WORKERS = int(os.environ.get("MARTECH_TEST_WORKERS", "1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_cluster_config(root: Path, recipients: list[str], db_url: str, *,
                         due_in_s: float = 3.0, **send: Any) -> None:
    """One newsletter falling due ``due_in_s`` from now (UTC).

    The schedule's cursor is written as a service that has known the campaign for a while
    would have it, so the occurrence fires (or is caught up, within its grace) however long
    the nodes take to start on a loaded machine: a schedule first seen after its only
    occurrence would never fire (the engine does not backfill a new schedule).
    """
    at = (datetime.now(UTC) + timedelta(seconds=due_in_s)).replace(microsecond=0)
    write_config(root, rows=recipients, send=send, extra={
        "schedule": {"at": at.strftime("%Y-%m-%d %H:%M:%S"), "timezone": "UTC"}})
    engine = make_engine(db_url)
    with engine.begin() as conn:
        run_store.advance_cursors(conn, {"news": ("news", at - timedelta(minutes=1))},
                                  datetime.now(UTC))
    engine.dispose()


class Node:
    def __init__(self, name: str, root: Path, db_url: str, smtp_port: int,
                 **settings: str) -> None:
        self.name = name
        self.root = root
        self.http_port = free_port()
        self.log_path = root / f"{name}.log"
        if db_url.startswith("postgresql"):  # so a test can find this node's sessions
            db_url = sa.engine.make_url(db_url).update_query_dict(
                {"application_name": name}).render_as_string(hide_password=False)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MARTECH_")}
        self.env.update({
            "MARTECH_CONFIG_DIR": str(root / "config"),
            "MARTECH_TEMPLATES_DIR": str(root / "templates"),
            "MARTECH_VAR_DIR": str(root / f"var-{name}"), "MARTECH_DATABASE_URL": db_url,
            "MARTECH_TRANSPORT": "smtp", "MARTECH_SMTP_HOST": "127.0.0.1",
            "MARTECH_SMTP_PORT": str(smtp_port), "MARTECH_SMTP_TIMEOUT_S": "5",
            "MARTECH_NODE_NAME": name, "MARTECH_SECRET_KEY": SECRET,
            "MARTECH_HTTP_PORT": str(self.http_port), "MARTECH_DELIVERY_LEASE_S": "3",
            "MARTECH_LOG_FORMAT": "json", "PYTHONPATH": str(REPO),
            "MARTECH_WORKERS": str(WORKERS),
            **{f"MARTECH_{k.upper()}": v for k, v in settings.items()},
        })
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "martech", "run"],
                                         cwd=self.root, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None and self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def http_ready(self) -> bool:
        """Does this node's HTTP app accept connections yet? (It starts after the engine.)"""
        try:
            with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                return True
        except OSError:
            return False

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A ``martech`` command run against this node's settings."""
        return subprocess.run([sys.executable, "-m", "martech", *args], cwd=self.root,
                              env=self.env, capture_output=True, text=True, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def outbox(self) -> Path:
        """Where this node's file transport writes: <var>/outbox/<campaign>/<run>/<id>.eml."""
        return Path(self.env["MARTECH_VAR_DIR"]) / "outbox"


@contextmanager
def cluster(root: Path, db_url: str, smtp_port: int, names: list[str], **settings: str
            ) -> Iterator[list[Node]]:
    nodes = [Node(name, root, db_url, smtp_port, **settings) for name in names]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


class Db:
    """Read-only looks at the shared database while the nodes work."""

    def __init__(self, url: str) -> None:
        # SQLite: a plain engine, whose reads take no write lock (make_engine begins every
        # transaction IMMEDIATE), so a look is never blocked behind a stopped node's write.
        self.engine = (sa.create_engine(url, connect_args={"timeout": 30})
                       if url.startswith("sqlite") else make_engine(url))

    def close(self) -> None:
        self.engine.dispose()

    def run(self) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(runs).where(runs.c.campaign == "news")).first()

    def statuses(self) -> Counter[str]:
        with self.engine.connect() as conn:
            return Counter(dict(conn.execute(sa.select(deliveries.c.status, sa.func.count())
                                             .group_by(deliveries.c.status)).all()))

    def ledger(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {r.recipient: r for r in conn.execute(sa.select(deliveries))}

    def claims(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(delivery_claims)))

    def in_transaction(self, node: str) -> bool:
        """Has ``node`` (PostgreSQL only) a transaction open right now?"""
        with self.engine.connect() as conn:
            return bool(conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n "
                "AND xact_start IS NOT NULL"), {"n": node}).scalar())

    def shares(self, *, by_node: bool = False) -> Counter[str]:
        """Recipients sent per process (the claimer of each sent row); ``by_node``: a node's
        worker processes (``<node>/w<i>``) counted with it."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deliveries.c.claimed_by, sa.func.count())
                .where(deliveries.c.status == "sent").group_by(deliveries.c.claimed_by)).all()
        out: Counter[str] = Counter()
        for claimer, count in rows:
            out[claimer.split("/w")[0] if by_node else claimer] += count
        return out


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, nodes: list[Node],
             poll_s: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and any node
    that died) after ``timeout_s``. Waiting on real processes, not moving time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        dead = [n.name for n in nodes if n.proc is not None and n.proc.poll() is not None
                and n.proc.returncode != -signal.SIGKILL]
        assert not dead, f"node(s) {dead} exited while waiting for {what}:\n" + "\n".join(
            n.log()[-3000:] for n in nodes if n.name in dead)
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)
