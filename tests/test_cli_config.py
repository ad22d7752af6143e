"""CLI acceptance for config commands: validate, schema, settings (as a user runs them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from martech.cli import main

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Environment for a CLI run against a copy of the example config."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    return {
        "MARTECH_CONFIG_DIR": str(tmp_path / "config"),
        "MARTECH_TEMPLATES_DIR": str(tmp_path / "templates" / "email"),
        "MARTECH_VAR_DIR": str(tmp_path / "var"),
        "MARTECH_DATABASE_URL": f"sqlite:///{tmp_path}/var/martech.db",
    }


def test_validate_example_config_exits_0_with_one_line(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["validate"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ok: ") and "campaign(s)" in lines[0] and "no problems" in lines[0]


def test_validate_bad_config_lists_every_problem(env: dict[str, str]) -> None:
    config = Path(env["MARTECH_CONFIG_DIR"])
    digest = config / "campaigns" / "weekly-digest.yaml"
    digest.write_text(digest.read_text().replace("Europe/Berlin", "Europe/Berlinn")
                      .replace("template:", "templat:"))
    result = CliRunner().invoke(main, ["validate", str(config)], env=env)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{digest}:5: schedule.timezone: unknown timezone "
                               "'Europe/Berlinn'") for line in lines), lines
    assert any(line.startswith(f"{digest}:") and ": templat: unknown key" in line
               for line in lines), lines
    assert lines[-1].endswith("problem(s) found")
    assert "Traceback" not in result.output


def test_validate_subprocess_like_a_user(env: dict[str, str], tmp_path: Path) -> None:
    checks = Path(env["MARTECH_CONFIG_DIR"]) / "checks.yaml"
    checks.write_text(checks.read_text().replace("- {check: website", "- {check: nope"))
    proc = subprocess.run(
        [sys.executable, "-m", "martech", "validate"], cwd=tmp_path,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{checks}:" in proc.stderr and ": guards.0.check: unknown check 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_schema_writes_json_schemas(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    result = CliRunner().invoke(main, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["campaign.schema.json", "checks.schema.json", "reports.schema.json"]
    campaign = json.loads((out / "campaign.schema.json").read_text())
    text = json.dumps(campaign)
    for kind in ("newsletter", "post_reminder"):
        assert f'"const": "{kind}"' in text or f'"enum": ["{kind}"]' in text
    checks = json.loads((out / "checks.schema.json").read_text())
    assert "checks" in checks["properties"] and "guards" in checks["properties"]
    assert checks["additionalProperties"] is False  # unknown keys rejected in editors too


def test_settings_masks_secrets(env: dict[str, str]) -> None:
    secrets = {"MARTECH_SMTP_PASSWORD": "hunter2-smtp-pass",
               "MARTECH_SECRET_KEY": "s3cr3t-hmac-key-value",
               "MARTECH_DATABASE_URL": "postgresql+psycopg://app:db-pass-xyz@127.0.0.1/db"}
    runner = CliRunner()
    table = runner.invoke(main, ["settings"], env={**env, **secrets})
    as_json = runner.invoke(main, ["settings", "--json"], env={**env, **secrets})
    for result in (table, as_json):
        assert result.exit_code == 0, result.output
        for value in ("hunter2-smtp-pass", "s3cr3t-hmac-key-value", "db-pass-xyz"):
            assert value not in result.output
    values = json.loads(as_json.stdout)
    assert values["smtp_password"] == "********"
    assert values["secret_key"] == "********"
    assert values["database_url"] == "postgresql+psycopg://app:********@127.0.0.1/db"
    assert values["config_dir"] == env["MARTECH_CONFIG_DIR"]
    assert "MARTECH_SMTP_PASSWORD" in table.stdout


def test_bad_setting_is_a_clear_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["settings"],
                                env={**env, "MARTECH_SMTP_PORT": "twenty-five"})
    assert result.exit_code != 0
    assert "MARTECH_SMTP_PORT" in result.output
    assert "Traceback" not in result.output
