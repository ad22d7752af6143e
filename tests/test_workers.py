"""Several worker processes per node (issue 14, target 2): ``MARTECH_WORKERS`` real processes
of one ``martech run`` share a campaign through the ledger's claims, every recipient once;
stopping the service stops and reaps them; a dead worker is restarted; an orphan stops."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from pydantic import SecretStr

from scheduler.settings import Settings
from scheduler.workers import read_payload, worker_payload
from tests.cluster_support import Db, Node, wait_for, write_cluster_config


def _alive(pid: int) -> bool:
    """Is ``pid`` a live (not zombie) process? Reaped children are gone from /proc."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _worker_pids(node: Node) -> dict[str, list[int]]:
    """Worker name -> pids it ran under, from the node's JSON log."""
    out: dict[str, list[int]] = {}
    for line in node.log().splitlines():
        if '"action": "worker_start"' in line:
            entry = json.loads(line)
            out.setdefault(entry["worker"], []).append(int(entry["pid"]))
    return out


def test_workers_default_by_database_and_settings_cross_to_a_worker_intact() -> None:
    assert Settings(database_url="sqlite:///x.db").resolved_workers == 1
    assert Settings(database_url="postgresql+psycopg://u@h/db").resolved_workers == (
        os.cpu_count() or 1)
    assert Settings(database_url="sqlite:///x.db", workers=3).resolved_workers == 3
    with pytest.raises(ValueError):
        Settings(workers=0)
    settings = Settings(secret_key=SecretStr("k" * 40), previous_secret_keys=["old-key"],
                        var_dir=Path("/tmp/v"), node_name="n1", workers=2)
    copy, parent_pid = read_payload(worker_payload(settings, "n1/w1"))
    assert parent_pid == os.getpid()
    assert copy.secret_key is not None and copy.secret_key.get_secret_value() == "k" * 40
    assert [k.get_secret_value() for k in copy.previous_secret_keys] == ["old-key"]
    assert (copy.var_dir, copy.node_name, copy.workers) == (Path("/tmp/v"), "n1/w1", 2)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_node_with_three_workers_sends_each_recipient_once(tmp_path: Path,
                                                               db_url: str) -> None:
    size = 10_000 if db_url.startswith("postgresql") else 4_000
    # Due once the workers are surely up (a process start takes seconds on a loaded box); one
    # process sends the file transport's ~2,000 messages a second, so the run lasts a while.
    write_cluster_config(tmp_path, [f"w{i:05d}@example.com" for i in range(size)], db_url,
                         due_in_s=10, batch_size=100, connections=4)
    db = Db(db_url)
    node = Node("node-a", tmp_path, db_url, 0, transport="file", workers="3").start()
    try:
        wait_for("both workers running",
                 lambda: node.log().count('"action": "worker_running"') == 2, 30, [node])
        assert db.run() is None  # not yet due: every process can take a share
        wait_for("the run to finish", lambda: (r := db.run()) is not None
                 and r.status == "done", 180, [node], poll_s=0.5)
        pids = _worker_pids(node)
        assert sorted(pids) == ["node-a/w1", "node-a/w2"], node.log()[-3000:]
        assert all(_alive(p[-1]) for p in pids.values())
        listed = json.loads(node.cli("status", "--json").stdout)["nodes"]
        assert {n["node"]: n["roles"] for n in listed if "/w" in n["node"]} == {
            "node-a/w1": ["worker"], "node-a/w2": ["worker"]}
    finally:
        node.stop()
    assert node.proc is not None and node.proc.returncode == 0
    # Stopped with the service: every worker reaped, none left behind.
    assert not [p for ps in pids.values() for p in ps if _alive(p)], node.log()[-3000:]
    files = Counter(p.stem for p in node.outbox.rglob("*.eml"))
    ledger, shares = db.ledger(), db.shares()
    db.close()
    assert {str(row.id) for row in ledger.values()} == set(files) and len(ledger) == size
    assert set(files.values()) == {1}
    assert {(row.status, row.attempts) for row in ledger.values()} == {("sent", 1)}
    assert set(shares) <= {"node-a", "node-a/w1", "node-a/w2"}
    assert len([n for n in shares.values() if n >= 100]) >= 2, shares  # >= 2 processes sent
    print(f"{size} recipients, one node, 3 processes: {dict(shares)}")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_dead_worker_is_restarted_and_orphans_stop(tmp_path: Path, sqlite_url: str) -> None:
    from scheduler.store.db import make_engine, upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    engine.dispose()
    write_cluster_config(tmp_path, ["x@example.com"], sqlite_url, due_in_s=3600)
    node = Node("node-a", tmp_path, sqlite_url, 0, transport="file", workers="2").start()
    try:
        first = wait_for("the worker", lambda: _worker_pids(node).get("node-a/w1"), 60,
                         [node])[0]
        os.kill(first, signal.SIGKILL)
        wait_for("the worker restarted", lambda: len(_worker_pids(node)["node-a/w1"]) == 2,
                 30, [node])
        assert '"action": "worker_died"' in node.log()
        second = _worker_pids(node)["node-a/w1"][1]
        node.kill()  # no SIGTERM: the worker must notice its parent is gone by itself
        deadline = time.monotonic() + 15
        while _alive(second) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(second), "the orphaned worker kept running"
    finally:
        node.stop()
