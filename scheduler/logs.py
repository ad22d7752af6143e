"""Logging: readable lines by default, JSON lines with ``MARTECH_LOG_FORMAT=json``.

Every line about a job carries ``job`` and ``run_id`` (passed as ``extra``). Our formatter is the
last line of defence for what must never be logged, in text and JSON alike: known secret values
become ``********``, e-mail addresses become their domain and a keyed hash (``example.com#1a2b…``,
enough to correlate lines), and link tokens signed by our keys become ``<token>``.

aiohttp logs requests itself. Its access log goes through :class:`RouteAccessLogger` (method,
route pattern, status, duration: never the path, which carries tokens), and the records of its
server loggers lose the exception message before any handler sees them (a parse error quotes the
raw request line); the traceback's frames stay.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import sys
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from scheduler.delivery.tokens import looks_like_token
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


# An address as people write them ('/' left out, so a URL's user@host is not taken for one);
# the domain must end in a letter TLD, so user@127.0.0.1 stays too.
_ADDRESS = re.compile(r"(?<![\w.!#$%&'*+=?^`{|}~/-])[\w.!#$%&'*+=?^`{|}~-]+"
                      r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,})"
                      r"(?![\w.-])")
_TOKENISH = re.compile(r"[A-Za-z0-9_-]{28,}")
# Log lines may be kept for years: the hash is keyed (from the configured secret key, or a
# random key per process), so it cannot be reversed by hashing a list of known addresses.
_REF_KEY = [secrets.token_bytes(32)]


def address_ref(email: str) -> str:
    """What the logs may say about an address: its domain and a short keyed hash."""
    norm = email.strip().lower()
    digest = hmac.new(_REF_KEY[0], norm.encode("utf-8"), hashlib.sha256).hexdigest()[:12]
    return f"{norm.rpartition('@')[2]}#{digest}"


def hide_personal(text: str) -> str:
    """Addresses → :func:`address_ref`; our link tokens → ``<token>``."""
    if "@" in text:
        text = _ADDRESS.sub(lambda m: address_ref(m.group(0)), text)
    return _TOKENISH.sub(lambda m: "<token>" if looks_like_token(m.group(0)) else m.group(0),
                         text)


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
        return hide_personal(self.redactor.clean(self.inner.format(record)))


# -- aiohttp's own loggers ---------------------------------------------------------------------

AIOHTTP_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal")
_REQUEST_LINE = re.compile(r"\b(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE)\s+\S+")
QUIET_ROUTES = frozenset({"/healthz", "/metrics"})  # polled every few seconds: DEBUG


def withheld_traceback(exc: BaseException) -> str:
    """The frames of ``exc`` (and its causes) with every exception message left out."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "code", None) or getattr(current, "status", None)
        frames = traceback.format_list(traceback.extract_tb(current.__traceback__))
        parts.insert(0, "Traceback (most recent call last):\n" + "".join(frames)
                     + f"{type(current).__qualname__}"
                     + (f" ({code})" if isinstance(code, int) else "")
                     + ": (message withheld: it may quote the request)")
        current = current.__cause__ or current.__context__
    return "\n\nDuring handling of the above exception, another exception occurred:\n\n".join(
        parts)


class WithholdRequestData(logging.Filter):
    """On aiohttp's loggers: request lines reduced to the method, exception messages withheld.

    A logger filter runs before every handler, so pytest's capture and any other handler see
    the cleaned record too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = withheld_traceback(record.exc_info[1])
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = _REQUEST_LINE.sub(r"\1 <path>", record.exc_text)
        if getattr(record, "action", None) != "http_access":  # ours names the route pattern
            message = record.getMessage()
            record.msg, record.args = _REQUEST_LINE.sub(r"\1 <path>", message), None
        return True


def guard_http_loggers() -> None:
    """Install :class:`WithholdRequestData` on aiohttp's loggers (idempotent)."""
    for name in AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, WithholdRequestData) for f in logger.filters):
            logger.addFilter(WithholdRequestData())


class RouteAccessLogger(AbstractAccessLogger):
    """aiohttp's access log without paths: ``POST /unsubscribe/{token} 200 3.1ms``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            resource = request.match_info.route.resource  # type: ignore[attr-defined]
        except (AttributeError, AssertionError):  # a request that never reached the router
            resource = None
        route = resource.canonical if resource is not None else "-"
        method = request.method if request.method.isalpha() else "?"
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        self.logger.log(level, "%s %s %d %.1fms", method[:10], route, response.status,
                        time * 1000, extra={"action": "http_access", "method": method[:10],
                                            "route": route, "status": response.status})


_REDACTOR: RedactSecrets | None = None


def redact_also(values: Iterable[str]) -> None:
    """Register secrets found in the config once it is loaded (and again on reload)."""
    if _REDACTOR is not None:
        _REDACTOR.add(values)


def _field(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)``; a pydantic model's fields are read from its ``__dict__``:
    its ``__getattr__`` raises, slowly, for each field a kind lacks (~50 ms for 10k)."""
    if isinstance(obj, BaseModel):
        return obj.__dict__.get(name)
    return getattr(obj, name, None)


def config_secret_values(config: Any) -> list[str]:
    """Webhook URLs are credentials (Slack's carry their token in the path); audience
    database URLs may carry a password."""
    values: list[str] = []
    targets = list(getattr(config.checks, "alerts", []))
    for campaign in config.campaigns.values():
        targets += list(_field(campaign, "notify") or [])
        database = _field(_field(campaign, "audience"), "database")
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
    values = [k.get_secret_value() for k in settings.previous_secret_keys]
    for secret in (settings.secret_key, settings.calendar_token):
        if secret is not None:
            values.append(secret.get_secret_value())
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
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        key = settings.secret_key.get_secret_value().encode("utf-8")
        _REF_KEY[0] = hashlib.sha256(b"martech-log-ref\x00" + key).digest()
    guard_http_loggers()
    for noisy in ("apscheduler", "aiosmtplib", "mail.log", "alembic", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
