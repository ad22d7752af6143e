"""Bad environments get one clear line and exit 1 — never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from martech.cli import main
from tests.conftest import REPO


def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(main, list(args), env={
        "MARTECH_CONFIG_DIR": str(REPO / "config"),
        "MARTECH_TEMPLATES_DIR": str(REPO / "templates" / "email"),
        **env,
    })
    return result.exit_code, result.output


@pytest.mark.parametrize("command", [["status"], ["pause", "weekly-digest", "--reason", "x"],
                                     ["health"], ["db", "upgrade"]])
def test_unreachable_database_is_one_line(command: list[str], tmp_path: Path) -> None:
    # Port 1 on loopback refuses at once; the password must not be echoed back.
    code, out = run_cli(*command, env={
        "MARTECH_DATABASE_URL": "postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/x",
        "MARTECH_VAR_DIR": str(tmp_path / "var")})
    assert code == 1
    assert "error: the database refused or could not be reached" in out
    assert "Connection refused" in out or "connection failed" in out
    assert "Traceback" not in out and "s3cret-pw" not in out


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://u:pw-x1@127.0.0.1/x", "No module named"),
    ("nonsense://x", "Can't load plugin"),
])
def test_unsupported_database_url(url: str, expected: str, tmp_path: Path) -> None:
    code, out = run_cli("status", env={"MARTECH_DATABASE_URL": url,
                                       "MARTECH_VAR_DIR": str(tmp_path / "var")})
    assert code == 1
    assert "error: cannot use the database URL" in out and expected in out
    assert "Traceback" not in out and "pw-x1" not in out


def test_unwritable_var_dir_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the var directory should be")
    code, out = run_cli("preview", "product-pulse", env={
        "MARTECH_DATABASE_URL": f"sqlite:///{tmp_path}/m.db",
        "MARTECH_VAR_DIR": str(blocker)})
    assert code == 1
    assert "error: cannot access" in out and str(blocker) in out
    assert "Traceback" not in out
