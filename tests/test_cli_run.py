"""Acceptance: `martech run` as a real process, and the operator commands around it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from martech.cli import main
from scheduler.store.db import make_engine
from scheduler.store.tables import check_results, check_rollups, runs

REPO = Path(__file__).resolve().parent.parent


def make_env(tmp_path: Path, reports_yaml: str) -> dict[str, str]:
    config = tmp_path / "config"
    config.mkdir()
    (config / "reports.yaml").write_text(reports_yaml)
    (config / "checks.yaml").write_text(
        "checks:\n  website: {http: {url: 'http://127.0.0.1:9/'}}\n")
    templates = tmp_path / "templates"
    templates.mkdir()
    shutil.copy(REPO / "templates" / "email" / "report.html", templates)
    return {
        "MARTECH_CONFIG_DIR": str(config),
        "MARTECH_TEMPLATES_DIR": str(templates),
        "MARTECH_VAR_DIR": str(tmp_path / "var"),
        "MARTECH_DATABASE_URL": f"sqlite:///{tmp_path}/var/martech.db",
        "MARTECH_NODE_NAME": "test-node",
        "MARTECH_RELOAD_POLL_S": "0.5",
        "MARTECH_HTTP_PORT": "0",  # never collide with a real service on 8025
    }


@pytest.mark.slow
def test_martech_run_fires_a_job_and_stops_on_sigterm(tmp_path: Path) -> None:
    start = datetime.now(UTC) + timedelta(seconds=5)
    env = make_env(tmp_path, (
        "reports:\n"
        "  - name: minutely\n"
        f"    schedule: {{every: 1m, start: \"{start:%Y-%m-%d %H:%M:%S}\"}}\n"
        "    formats: [json]\n"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "martech", "run"], cwd=tmp_path, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_dir = tmp_path / "var" / "reports" / "minutely"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if out_dir.is_dir() and any(out_dir.glob("*.json")):
                break
            time.sleep(0.2)  # waiting on a real process, not moving time
        assert proc.poll() is None, proc.communicate()
        files = list(out_dir.glob("2*.json"))
        assert len(files) == 1, "the job did not fire"
        assert files[0].name == f"{start:%Y%m%dT%H%M%S}Z.json"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - sent < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Schedule" in stdout and "minutely" in stdout and "every 1m" in stdout
    assert "Health checks" in stdout and "website" in stdout
    assert "run done" in stderr and "stopped" in stderr
    engine = make_engine(env["MARTECH_DATABASE_URL"])
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(runs.c.campaign, runs.c.status)))
    engine.dispose()
    assert rows == [("minutely", "done")]


@pytest.fixture
def operator_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield make_env(tmp_path, (
        "reports:\n"
        "  - name: weekly\n"
        "    schedule: {cron: \"0 8 * * MON\", timezone: Europe/Berlin}\n"))
    root.handlers[:] = handlers  # the CLI installs its own log handler
    root.setLevel(level)


def test_status_pause_resume_run_job_report(operator_env: dict[str, str]) -> None:
    runner = CliRunner()
    env = operator_env

    result = runner.invoke(main, ["pause", "weekly", "--reason", "waiting for numbers"],
                           env=env)
    assert result.exit_code == 0, result.output
    assert "weekly: paused (waiting for numbers)" in result.stdout

    status = runner.invoke(main, ["status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    [row] = data["campaigns"]
    assert row["campaign"] == "weekly" and row["kind"] == "report"
    assert [p["reason"] for p in row["paused"]] == ["manual"]
    assert row["paused"][0]["detail"] == "waiting for numbers"
    assert row["next_run"] is not None
    assert data["checks"][0]["check"] == "website"

    held = runner.invoke(main, ["run-job", "weekly"], env=env)
    assert held.exit_code == 0, held.output
    assert ": held" in held.stdout

    result = runner.invoke(main, ["resume", "weekly"], env=env)
    assert result.exit_code == 0 and "manual pause cleared" in result.stdout

    ran = runner.invoke(main, ["run-job", "weekly"], env=env)
    assert ran.exit_code == 0, ran.output
    assert ": done" in ran.stdout
    reports = list((Path(env["MARTECH_VAR_DIR"]) / "reports" / "weekly").glob("2*.html"))
    assert len(reports) == 1

    table = runner.invoke(main, ["status"], env=env)
    assert table.exit_code == 0 and "weekly" in table.stdout and "Campaigns" in table.stdout

    report = runner.invoke(main, ["report", "weekly"], env=env)
    assert report.exit_code == 0, report.output
    printed = report.stdout.strip().splitlines()
    assert len(printed) == 3 and all(Path(p).is_file() for p in printed)

    unknown = runner.invoke(main, ["run-job", "nope"], env=env)
    assert unknown.exit_code == 1 and "no campaign named 'nope'" in unknown.stderr


def test_report_flags(operator_env: dict[str, str], tmp_path: Path) -> None:
    runner, env = CliRunner(), operator_env
    out = tmp_path / "day.json"
    one = runner.invoke(main, ["report", "--since", "24h", "--format", "json", "--out", str(out)],
                        env=env)
    assert one.exit_code == 0, one.output
    assert one.stdout.strip() == str(out)
    data = json.loads(out.read_text())
    since, until = (datetime.fromisoformat(data[k]) for k in ("since", "until"))
    assert data["report"] == "adhoc" and until - since == timedelta(hours=24)
    assert not list(tmp_path.glob("latest.*"))  # one named file, nothing beside it
    folder = tmp_path / "out"
    two = runner.invoke(main, ["report", "weekly", "--format", "csv", "--format", "recipients",
                               "--out", str(folder)], env=env)
    assert two.exit_code == 0, two.output
    assert sorted("".join(p.suffixes) for p in folder.glob("2*")) == [".csv", ".recipients.csv"]
    alone = tmp_path / "who.csv"
    three = runner.invoke(main, ["report", "--format", "recipients", "--out", str(alone)],
                          env=env)
    assert three.exit_code == 0, three.output
    assert alone.read_text().startswith("campaign,run_id,") and not list(tmp_path.glob("lat*"))
    unknown = runner.invoke(main, ["report", "--campaign", "nope"], env=env)
    assert unknown.exit_code == 1 and "no campaign named 'nope'" in unknown.stderr
    bad = runner.invoke(main, ["report", "--since", "a week"], env=env)
    assert bad.exit_code == 2 and "expected a duration like 7d" in bad.stderr


def test_retention_rolls_up_and_prunes(operator_env: dict[str, str]) -> None:
    env = operator_env
    assert CliRunner().invoke(main, ["db", "upgrade"], env=env).exit_code == 0
    engine = make_engine(env["MARTECH_DATABASE_URL"])
    old = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=40)
    with engine.begin() as conn:
        conn.execute(sa.insert(check_results), [
            {"check_name": "website", "at": old + timedelta(minutes=i), "outcome": "ok",
             "latency_ms": 20.0} for i in range(120)])
    result = CliRunner().invoke(main, ["retention"], env=env)
    assert result.exit_code == 0, result.output
    assert "rolled up" in result.stdout
    with engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(check_results)).scalar()
        rolled = conn.execute(sa.select(sa.func.sum(check_rollups.c.results)).where(
            check_rollups.c.grain == "hour")).scalar()
    engine.dispose()
    assert (left, rolled) == (0, 120)  # older than the 30-day raw age: kept only rolled up
