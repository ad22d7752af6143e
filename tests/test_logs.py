"""Structured logging: JSON lines carry job context; secrets never appear."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from pydantic import SecretStr

from scheduler.logs import setup_logging
from scheduler.settings import LogFormat, Settings


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def test_json_lines_carry_job_and_run_id(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging(_settings(log_format=LogFormat.json), stream)
    logging.getLogger("martech.test").info(
        "batch sent", extra={"action": "send_batch", "job": "weekly-digest", "run_id": 7})
    record = json.loads(stream.getvalue().strip())
    assert record["msg"] == "batch sent"
    assert record["job"] == "weekly-digest"
    assert record["run_id"] == 7
    assert record["level"] == "info"


def test_text_lines_are_readable(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging(_settings(), stream)
    logging.getLogger("martech.test").warning("run missed", extra={"job": "x", "run_id": 3})
    line = stream.getvalue()
    assert "WARNING" in line and "run missed" in line and "job=x" in line and "run_id=3" in line


def test_secrets_are_redacted_everywhere(restore_logging: None) -> None:
    stream = io.StringIO()
    settings = _settings(
        log_format=LogFormat.json,
        smtp_password=SecretStr("hunter2-relay-pass"),
        secret_key=SecretStr("k3y-for-hmac-links"),
        database_url="postgresql+psycopg://app:db-pa55word@127.0.0.1/x",
    )
    setup_logging(settings, stream)
    log = logging.getLogger("martech.test")
    log.error("login failed with %s", "hunter2-relay-pass", extra={"detail": "k3y-for-hmac-links"})
    log.info("connecting to postgresql+psycopg://app:db-pa55word@127.0.0.1/x")
    out = stream.getvalue()
    for secret in ("hunter2-relay-pass", "k3y-for-hmac-links", "db-pa55word"):
        assert secret not in out
    assert out.count("********") >= 3


def test_settings_masked_hides_every_secret() -> None:
    settings = _settings(smtp_password=SecretStr("p4ss-word"),
                         database_url="postgresql+psycopg://u:pw-in-url@127.0.0.1/db")
    masked = settings.masked()
    text = json.dumps(masked, default=str)
    assert "p4ss-word" not in text and "pw-in-url" not in text
    assert masked["smtp_password"] == "********"
    assert masked["database_url"] == "postgresql+psycopg://u:********@127.0.0.1/db"


def test_tracebacks_are_redacted_too(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging(_settings(smtp_password=SecretStr("relay-pa55-in-reply")), stream)
    try:
        raise RuntimeError("535 auth failed for password relay-pa55-in-reply")
    except RuntimeError:
        logging.getLogger("martech.test").exception("send failed")
    out = stream.getvalue()
    assert "Traceback" in out and "535 auth failed" in out
    assert "relay-pa55-in-reply" not in out


def test_webhook_urls_from_the_config_are_redacted(restore_logging: None, tmp_path: object,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from pathlib import Path

    from martech.compose import load_config

    root = Path(str(tmp_path)) / "config"
    shutil.copytree(Path(__file__).resolve().parent.parent / "config", root)
    hook = "https://hooks.example.invalid/services/T000/B000/s3cr3t-token"
    monkeypatch.setenv("IT_HOOK", hook)
    checks = (root / "checks.yaml").read_text()
    (root / "checks.yaml").write_text(checks.replace(
        "alerts:\n", 'alerts:\n  - {webhook: "${IT_HOOK}"}\n', 1))
    stream = io.StringIO()
    setup_logging(_settings(log_format=LogFormat.json), stream)
    load_config(root)
    try:
        raise ConnectionError(f"POST {hook} failed")
    except ConnectionError:
        logging.getLogger("martech.test").exception("webhook to %s failed", hook)
    out = stream.getvalue()
    assert "s3cr3t-token" not in out
    assert "webhook to ******** failed" in out


def test_other_handlers_still_see_the_raw_record(restore_logging: None,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Redaction happens in our formatter, not on the LogRecord that every handler shares.
    stream = io.StringIO()
    setup_logging(_settings(smtp_password=SecretStr("pw-for-capture")), stream)
    logging.getLogger().addHandler(caplog.handler)  # setup_logging replaced root's handlers
    with caplog.at_level(logging.ERROR, logger="martech.test"):
        try:
            raise RuntimeError("boom pw-for-capture")
        except RuntimeError:
            logging.getLogger("martech.test").exception("failed")
    [record] = [r for r in caplog.records if r.name == "martech.test"]
    assert record.exc_info is not None
    assert "pw-for-capture" not in stream.getvalue()
