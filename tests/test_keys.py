"""Keys: refused when guessable behind a public URL, generated when there is none, rotated."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from martech.cli import main
from scheduler.delivery.tokens import (
    MIN_KEY_BYTES,
    Signer,
    UnsubscribeRef,
    key_id,
    open_token,
    unsubscribe_token,
    verify_open,
    verify_unsubscribe,
)
from scheduler.keys import InsecureSecretKey, resolve_keys, signer_for
from scheduler.settings import Settings
from scheduler.store import heartbeats
from scheduler.store.db import make_engine
from tests.newsletter_fixtures import write_config

OLD_KEY = "old-key-0123456789-abcdefghijklmnopqrstuvwxyz"
NEW_KEY = "new-key-0123456789-abcdefghijklmnopqrstuvwxyz"


def _env(root: Path, **extra: str) -> dict[str, str]:
    write_config(root, rows=["ann@example.com"])
    (root / "config" / "checks.yaml").write_text(
        "checks:\n  website: {http: {url: 'http://127.0.0.1:9/'}}\n")
    env = {"MARTECH_CONFIG_DIR": str(root / "config"),
           "MARTECH_TEMPLATES_DIR": str(root / "templates"),
           "MARTECH_VAR_DIR": str(root / "var"),
           "MARTECH_DATABASE_URL": f"sqlite:///{root}/m.db", "MARTECH_NODE_NAME": "keys-test",
           "MARTECH_HTTP_PORT": "0"}
    return {**env, **extra}


def _serving(root: Path) -> bool:
    """The service has started: its heartbeat row is in the database."""
    if not (root / "m.db").exists():
        return False
    engine = make_engine(f"sqlite:///{root}/m.db")
    try:
        with engine.begin() as conn:
            return any(row.role == "service" for row in heartbeats.latest(conn))
    except sa.exc.OperationalError:  # not migrated yet
        return False
    finally:
        engine.dispose()


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, var_dir=tmp_path / "var", **values)  # type: ignore[call-arg]


def test_martech_run_refuses_a_public_url_without_a_key(tmp_path: Path) -> None:
    env = _env(tmp_path, MARTECH_PUBLIC_BASE_URL="https://mt.acme.example")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MARTECH_")}
    proc = subprocess.run([sys.executable, "-m", "martech", "run"], cwd=tmp_path,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "MARTECH_SECRET_KEY is not set" in proc.stderr
    assert "MARTECH_PUBLIC_BASE_URL" in proc.stderr and "martech keygen" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "var" / "secret_key").exists()  # nothing generated, nothing started


@pytest.mark.parametrize(("key", "why"), [
    ("", "is not set"),
    ("insecure-dev-key-change-me", "is a published default"),
    ("x" * (MIN_KEY_BYTES - 1), f"is shorter than {MIN_KEY_BYTES} bytes"),
])
def test_a_guessable_key_with_a_public_url_is_refused(tmp_path: Path, key: str, why: str
                                                      ) -> None:
    env = _env(tmp_path, MARTECH_PUBLIC_BASE_URL="https://mt.acme.example",
               MARTECH_SECRET_KEY=key)
    result = CliRunner().invoke(main, ["run"], env=env)
    assert result.exit_code == 1
    assert f"MARTECH_SECRET_KEY {why}" in result.output
    assert "Traceback" not in result.output


def test_a_weak_previous_key_is_refused_too(tmp_path: Path) -> None:
    settings = _settings(tmp_path, public_base_url="https://mt.acme.example",
                         secret_key=NEW_KEY, previous_secret_keys="short")
    with pytest.raises(InsecureSecretKey) as err:
        signer_for(settings)
    assert err.value.setting == "MARTECH_PREVIOUS_SECRET_KEYS"


@pytest.mark.slow
def test_without_a_public_url_run_generates_a_key_under_var_and_says_so(tmp_path: Path) -> None:
    env = _env(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MARTECH_")}
    proc = subprocess.Popen([sys.executable, "-m", "martech", "run"], cwd=tmp_path,
                            env={**clean, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    key_file = tmp_path / "var" / "secret_key"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not _serving(tmp_path):
            time.sleep(0.1)  # waiting on a real process, not moving time
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "signing links with a key generated in" in stderr and str(key_file) in stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key.encode()) >= MIN_KEY_BYTES
    assert key not in stderr  # the log says where it is, never what it is


def test_the_generated_key_is_kept(tmp_path: Path) -> None:
    first = resolve_keys(_settings(tmp_path))
    assert first.generated == tmp_path / "var" / "secret_key"
    again = resolve_keys(_settings(tmp_path))
    assert again.current == first.current
    explicit = resolve_keys(_settings(tmp_path, secret_key=NEW_KEY))
    assert explicit.current == NEW_KEY and explicit.generated is None


def test_rotation_old_tokens_verify_new_ones_use_the_new_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = signer_for(_settings(tmp_path, public_base_url="https://mt.acme.example",
                                  secret_key=OLD_KEY))
    old_unsubscribe, old_open = unsubscribe_token(before, 7), open_token(before, 7)
    monkeypatch.setenv("MARTECH_PREVIOUS_SECRET_KEYS",
                       f" {OLD_KEY} , another-retired-key-0123456789abcdef")
    rotated = _settings(tmp_path, public_base_url="https://mt.acme.example", secret_key=NEW_KEY)
    monkeypatch.delenv("MARTECH_PREVIOUS_SECRET_KEYS")
    after = signer_for(rotated)
    assert len(rotated.previous_secret_keys) == 2
    assert verify_unsubscribe(after, old_unsubscribe) == UnsubscribeRef(delivery_id=7)
    assert verify_open(after, old_open) == 7
    new = unsubscribe_token(after, 8)
    assert after.key_id == key_id(NEW_KEY.encode()).hex() != before.key_id
    assert verify_unsubscribe(after, new) == UnsubscribeRef(delivery_id=8)
    assert verify_unsubscribe(before, new) is None  # the old key never learns the new one
    forged = unsubscribe_token(Signer("someone-elses-key-0123456789-abcdefgh"), 7)
    assert verify_unsubscribe(after, forged) is None
    retired = signer_for(_settings(tmp_path, public_base_url="https://mt.acme.example",
                                   secret_key=NEW_KEY))
    assert verify_unsubscribe(retired, old_unsubscribe) is None  # dropped: no longer valid


def test_keygen_prints_a_strong_key_and_its_id() -> None:
    result = CliRunner().invoke(main, ["keygen"])
    assert result.exit_code == 0
    key = result.stdout.strip()
    assert len(key.encode()) >= MIN_KEY_BYTES
    assert f"key id: {key_id(key.encode()).hex()}" in result.stderr
    assert CliRunner().invoke(main, ["keygen"]).stdout.strip() != key
    shown = CliRunner().invoke(main, ["keygen", "--id", key])
    assert shown.stdout.strip() == key_id(key.encode()).hex()


def test_settings_never_show_the_previous_keys(tmp_path: Path) -> None:
    env = _env(tmp_path, MARTECH_PREVIOUS_SECRET_KEYS=f"{OLD_KEY},{NEW_KEY}")
    result = CliRunner().invoke(main, ["settings", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert OLD_KEY not in result.output and NEW_KEY not in result.output
    assert '"previous_secret_keys": [\n    "********",\n    "********"\n  ]' in result.output
