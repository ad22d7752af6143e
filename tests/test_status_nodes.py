"""``martech status`` lists the nodes: last heartbeat and age by the database's clock, alive
or dead, and what each holds — runs, ``sending`` deliveries, check leases (issue 9, point 4)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from martech.cli import main
from scheduler.store import checks as check_store
from scheduler.store import dbclock, heartbeats
from scheduler.store import runs as run_store
from scheduler.store.db import make_engine
from scheduler.store.runs import Claim
from scheduler.store.tables import deliveries
from tests.test_cli_run import make_env

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[dict[str, str]]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    env = make_env(tmp_path, "reports:\n  - name: weekly\n"
                             "    schedule: {cron: \"0 8 * * MON\", timezone: Europe/Berlin}\n")
    yield {**env, "MARTECH_DATABASE_URL": db_url, "MARTECH_HEARTBEAT_INTERVAL_S": "15"}
    root.handlers[:] = handlers  # the CLI installs its own log handler
    root.setLevel(level)


def populate(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            now = dbclock.db_now(conn)
            heartbeats.beat(conn, "alive-1", "service", now - timedelta(seconds=3))
            heartbeats.beat(conn, "dead-1", "service", now - timedelta(minutes=10))
            won = run_store.claim(conn, [
                Claim("weekly", "weekly", "report", T0, "s1"),
                Claim("weekly", "weekly", "report", T0 + timedelta(days=7), "s2"),
                Claim("weekly", "weekly", "report", T0 + timedelta(days=14), "s3",
                      status="done"),
            ], "alive-1", T0)
            first = min(won.values())
            run_store.set_status(conn, first, "running", T0)
            conn.execute(sa.insert(deliveries), [
                {"run_id": first, "recipient": f"r{n}@example.com", "status": "sending",
                 "claimed_by": "dead-1" if n < 2 else "alive-1"} for n in range(5)])
            check_store.hold_leases(conn, ["website"], "alive-1", 60)
    finally:
        engine.dispose()


def test_status_lists_nodes_with_what_they_hold(env: dict[str, str], db_url: str) -> None:
    populate(db_url)
    result = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    nodes = {n["node"]: n for n in json.loads(result.stdout)["nodes"]}
    assert set(nodes) == {"alive-1", "dead-1"}
    alive, dead = nodes["alive-1"], nodes["dead-1"]
    assert alive["alive"] is True and 2 <= alive["heartbeat_age_s"] < 30
    assert dead["alive"] is False and dead["heartbeat_age_s"] >= 600
    assert alive["roles"] == ["service"] and alive["last_heartbeat"]
    assert alive["runs"] == {"pending": 1, "running": 1}  # the done run is not held
    assert (alive["sending"], dead["sending"]) == (3, 2)
    assert (alive["checks"], dead["checks"]) == (1, 0)

    table = CliRunner().invoke(main, ["status"], env=env)
    assert table.exit_code == 0, table.output
    assert "Nodes" in table.stdout
    [alive_line] = [line for line in table.stdout.splitlines() if "alive-1" in line]
    assert re.search(r"alive \(\d+s ago\)", alive_line)
    assert "1 pending, 1 running" in alive_line
    [dead_line] = [line for line in table.stdout.splitlines() if "dead-1" in line]
    assert "dead (" in dead_line


def test_status_before_any_node_started(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nodes"] == []
    table = CliRunner().invoke(main, ["status"], env=env)
    assert "(no node has started yet)" in table.stdout
