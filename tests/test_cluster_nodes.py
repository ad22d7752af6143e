"""Acceptance: several real ``martech run`` processes on one database (issue 9, point 4).

- Three nodes started at once on an empty database migrate once and all come up; a schedule
  falling due while they race fires each occurrence once; their guard probes its check once
  per interval between them and declares it down after the configured number of results.
- A node SIGSTOPped while holding a run past its lease is adopted by another; SIGCONTed, its
  late run-status write is refused.

The nodes are ``python -m tests.cluster_node run``: ``martech run`` plus the ``gate`` job kind,
whose runs last until the test opens the gate. Waiting here is on real processes, polling the
database and files; no test moves time by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scheduler.store import heartbeats
from scheduler.store.db import current_revision, head_revision, make_engine, schema_diff
from scheduler.store.tables import check_results, check_state, runs
from tests.conftest import REPO

pytestmark = pytest.mark.slow
T = TypeVar("T")
START_TIMEOUT_S = 60.0  # three interpreters importing everything on a busy 2-core machine


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    stderr: Path

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot see SIGTERM
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


class Cluster:
    def __init__(self, root: Path, db_url: str, *, heartbeat_interval_s: float) -> None:
        self.root = root
        self.var = root / "var"
        self.var.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url
        self.env = {
            **os.environ,
            "MARTECH_DATABASE_URL": db_url,
            "MARTECH_CONFIG_DIR": str(root / "config"),
            "MARTECH_TEMPLATES_DIR": str(REPO / "templates" / "email"),
            "MARTECH_VAR_DIR": str(self.var),
            "MARTECH_HTTP_PORT": "0",
            "MARTECH_LOG_FORMAT": "json",
            "MARTECH_RELOAD_POLL_S": "0.5",
            "MARTECH_HEARTBEAT_INTERVAL_S": str(heartbeat_interval_s),
            "MARTECH_SHUTDOWN_TIMEOUT_S": "3",
            # tests.cluster_node registers a test kind a `martech worker` would not know
            "MARTECH_WORKERS": "1",
        }
        self.nodes: list[Node] = []

    def start(self, name: str) -> Node:
        stderr = self.root / f"{name}.log"
        with stderr.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cluster_node", "run"], cwd=REPO,
                env={**self.env, "MARTECH_NODE_NAME": name},
                stdout=subprocess.DEVNULL, stderr=out)
        node = Node(name, proc, stderr)
        self.nodes.append(node)
        return node

    def stop(self) -> dict[str, int]:
        return {node.name: node.stop() for node in self.nodes}

    def lines(self, name: str) -> list[list[str]]:
        path = self.var / name
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def write_config(root: Path, campaign: str, checks: str = "checks: {}\n") -> None:
    config = root / "config"
    (config / "campaigns").mkdir(parents=True, exist_ok=True)
    (config / "campaigns" / "gate.yaml").write_text(campaign)
    (config / "checks.yaml").write_text(checks)


def wait_for(what: str, probe: Callable[[], T | None], nodes: list[Node],
             timeout_s: float = START_TIMEOUT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node in nodes:
            if node.proc.poll() is not None:
                raise AssertionError(f"{node.name} exited ({node.proc.returncode}) waiting for "
                                     f"{what}:\n{node.stderr.read_text()[-3000:]}")
        value = probe()
        if value:
            return value
        time.sleep(0.1)  # waiting on real processes, not moving time
    raise AssertionError(f"timed out waiting for {what}")


def rows(db: Engine, stmt: sa.Select[Any]) -> list[sa.Row[Any]]:
    try:
        with db.connect() as conn:
            return list(conn.execute(stmt))
    except sa.exc.DBAPIError:  # not migrated yet
        return []


def alive(db: Engine, names: set[str]) -> bool:
    try:
        with db.connect() as conn:
            return {b.node for b in heartbeats.latest(conn)} >= names
    except sa.exc.DBAPIError:
        return False


@pytest.fixture
def cluster_db(request: pytest.FixtureRequest) -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def test_three_nodes_starting_at_once_migrate_once_and_fire_each_occurrence_once(
        empty_db_url: str, tmp_path: Path, cluster_db: list[Engine]) -> None:
    write_config(tmp_path, "name: tick\nkind: gate\nschedule: {every: 2s}\n", checks=(
        "defaults: {interval: 1s, retry_interval: 1s, timeout: 1s, failure_threshold: 3}\n"
        "checks:\n  website: {http: {url: 'http://127.0.0.1:9/'}}\n"))
    cluster = Cluster(tmp_path, empty_db_url, heartbeat_interval_s=1.0)
    (cluster.var / "gate-open").touch()  # runs finish at once
    names = {"node-1", "node-2", "node-3"}
    db = make_engine(empty_db_url)
    cluster_db.append(db)
    try:
        for name in sorted(names):  # at once: nobody waits for anybody
            cluster.start(name)
        wait_for("three live nodes", lambda: alive(db, names), cluster.nodes)
        done = sa.select(runs).where(runs.c.status == "done")
        wait_for("three occurrences done", lambda: len(rows(db, done)) >= 3, cluster.nodes)
        wait_for("the check declared down", lambda: rows(
            db, sa.select(check_state).where(check_state.c.verdict == "down")), cluster.nodes)
    finally:
        codes = cluster.stop()
    logs = {n.name: n.stderr.read_text() for n in cluster.nodes}
    assert codes == dict.fromkeys(names, 0), logs
    assert not [name for name, text in logs.items() if "Traceback" in text], logs
    assert current_revision(db) == head_revision() and not schema_diff(db)
    # Each occurrence fired once: one run row each (a constraint), executed once.
    all_runs = rows(db, sa.select(runs).order_by(runs.c.scheduled_at))
    started = [int(run_id) for _node, run_id, _lease in cluster.lines("gate-started")]
    assert sorted(started) == sorted({*started}), "a run was executed twice"
    assert {r.id for r in all_runs if r.status == "done"} <= set(started)
    assert len({r.scheduled_at for r in all_runs}) == len(all_runs)
    # The guard: the check probed by one node at a time, and down after three results.
    results = rows(db, sa.select(check_results).order_by(check_results.c.at))
    fails = [r.at for r in results if r.outcome == "fail"]
    [state] = rows(db, sa.select(check_state))
    assert state.since == fails[2]
    span_s = (results[-1].at - results[0].at).total_seconds()
    assert len(results) <= span_s / 1.0 + 3, "probed more than once per interval"


def test_a_stopped_node_past_its_lease_is_adopted_and_its_late_write_refused(
        db_url: str, tmp_path: Path, cluster_db: list[Engine]) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SIGSTOP can freeze a node inside SQLite's one write lock; several "
                    "machines, and so adoption after a stall, are PostgreSQL's")
    write_config(tmp_path, "name: long\nkind: gate\nschedule: {at: '2020-01-01 00:00'}\n"
                 "enabled: false\n")
    cluster = Cluster(tmp_path, db_url, heartbeat_interval_s=1.0)
    db = make_engine(db_url)
    cluster_db.append(db)
    try:
        nodes = {cluster.start(name).name: cluster.nodes[-1] for name in ("node-a", "node-b")}
        wait_for("two live nodes", lambda: alive(db, set(nodes)), cluster.nodes)
        # Both up: now the run falls due (both nodes reload the file and race to claim it).
        at = datetime.now(UTC) + timedelta(seconds=2)
        write_config(tmp_path, f"name: long\nkind: gate\n"
                               f"schedule: {{at: '{at:%Y-%m-%d %H:%M:%S}'}}\n")
        [[holder, run_id, lease]] = wait_for("the run started",
                                             lambda: cluster.lines("gate-started"),
                                             cluster.nodes)
        assert lease == "0"
        stopped = nodes[holder]
        [other] = [n for n in nodes.values() if n is not stopped]
        stopped.proc.send_signal(signal.SIGSTOP)  # holds the run, stops beating
        adopted = wait_for("the run adopted", lambda: [
            line for line in cluster.lines("gate-started") if line[0] == other.name],
            [other])
        assert adopted == [[other.name, run_id, "1"]]
        (cluster.var / "gate-open").touch()
        finished = sa.select(runs).where(runs.c.status == "done")
        [row] = wait_for("the adopter's outcome", lambda: rows(db, finished), [other])
        assert (row.node, row.lease_gen, row.detail) == (other.name, 1,
                                                         f"finished by {other.name}")
        stopped.proc.send_signal(signal.SIGCONT)  # back, and finishing its stale copy
        refused = wait_for("the late write refused", lambda: [
            e for e in stopped.logs() if e.get("action") == "fenced"], [stopped, other])
    finally:
        codes = cluster.stop()
    assert refused[0]["run_id"] == int(run_id) and refused[0]["status"] == "done"
    assert [line[0] for line in cluster.lines("gate-done")].count(holder) == 1
    [row] = rows(db, sa.select(runs))
    assert (row.status, row.node, row.lease_gen) == ("done", other.name, 1)
    assert codes == {"node-a": 0, "node-b": 0}
