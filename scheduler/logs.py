"""Logging: readable lines by default, JSON lines with ``MARTECH_LOG_FORMAT=json``.

Every line about a job carries ``job`` and ``run_id`` (passed as ``extra``). A redaction filter
replaces known secret values wherever they appear, as a last line of defence.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import make_url

from scheduler.settings import LogFormat, Settings

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    # RedactSecrets pre-renders (and cleans) tracebacks into exc_text.
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_extras(record))
        exc = _exception_text(self, record)
        if exc:
            payload["exc"] = exc
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        extras = _extras(record)
        context = " ".join(f"{k}={v}" for k, v in extras.items() if v is not None)
        line = f"{ts} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if context:
            line += f"  [{context}]"
        exc = _exception_text(self, record)
        if exc:
            line += "\n" + exc
        return line


class RedactSecrets:
    """Known secret values, replaced by ``********`` in every rendered log line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """More values to hide (webhook URLs and database passwords from the config)."""
        known = set(self.secrets)
        self.secrets += [s for s in secrets if s and len(s) >= 4 and s not in known]
        # Longest first, so a URL is hidden whole before a shorter secret inside it.
        self.secrets.sort(key=len, reverse=True)

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return text


class RedactingFormatter(logging.Formatter):
    """Cleans the finished line — message, extras and traceback alike.

    Redacting the rendered text (not the LogRecord, which every handler shares) keeps other
    handlers, such as pytest's capture, seeing the record as it was logged.
    """

    def __init__(self, inner: logging.Formatter, redactor: RedactSecrets) -> None:
        super().__init__()
        self.inner = inner
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.clean(self.inner.format(record))


_REDACTOR: RedactSecrets | None = None


def redact_also(values: Iterable[str]) -> None:
    """Register secrets found in the config once it is loaded (and again on reload)."""
    if _REDACTOR is not None:
        _REDACTOR.add(values)


def config_secret_values(config: Any) -> list[str]:
    """Webhook URLs are credentials (Slack's carry their token in the path); audience
    database URLs may carry a password."""
    values: list[str] = []
    targets = list(getattr(config.checks, "alerts", []))
    for campaign in config.campaigns.values():
        targets += list(getattr(campaign, "notify", []) or [])
        audience = getattr(campaign, "audience", None)
        database = getattr(audience, "database", None)
        if database:
            try:
                password = make_url(database).password
            except Exception:
                password = None
            if password:
                values.append(str(password))
    values += [t.webhook for t in targets if getattr(t, "webhook", None)]
    return values


def secret_values(settings: Settings) -> list[str]:
    values = [settings.secret_key.get_secret_value()]
    if settings.smtp_password is not None:
        values.append(settings.smtp_password.get_secret_value())
    try:
        password = make_url(settings.database_url).password
    except Exception:
        password = None
    if password:
        values.append(str(password))
    return values


def setup_logging(settings: Settings, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    inner: logging.Formatter = (JsonFormatter() if settings.log_format == LogFormat.json
                                else TextFormatter())
    global _REDACTOR
    _REDACTOR = RedactSecrets(secret_values(settings))
    handler.setFormatter(RedactingFormatter(inner, _REDACTOR))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for noisy in ("apscheduler", "aiosmtplib", "mail.log", "alembic", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
