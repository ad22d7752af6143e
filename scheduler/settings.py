"""Service settings: ``MARTECH_*`` environment variables, an optional ``.env``, secret files."""

from __future__ import annotations

import json
import os
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class TransportKind(StrEnum):
    smtp = "smtp"
    file = "file"
    console = "console"


class SmtpSecurity(StrEnum):
    none = "none"
    starttls = "starttls"
    tls = "tls"


class ImapSecurity(StrEnum):
    none = "none"
    tls = "tls"  # implicit TLS (port 993); aioimaplib has no STARTTLS


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def _secrets_dir() -> str | None:
    # Docker/Kubernetes mount secrets as files; MARTECH_SECRETS_DIR points at them.
    path = os.environ.get("MARTECH_SECRETS_DIR")
    return path if path and Path(path).is_dir() else None


class Settings(BaseSettings):
    """Everything IT tunes per environment. Secrets are ``SecretStr`` and print masked."""

    model_config = SettingsConfigDict(
        env_prefix="MARTECH_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        secrets_dir=_secrets_dir(),
    )

    database_url: str = Field(
        default="sqlite:///var/martech.db",
        description="SQLAlchemy URL; sqlite:///path or postgresql+psycopg://user@host/db",
    )
    config_dir: Path = Field(default=Path("config"), description="directory of YAML config")
    templates_dir: Path = Field(
        default=Path("templates/email"), description="Jinja2 e-mail templates"
    )
    var_dir: Path = Field(default=Path("var"), description="state: outbox, reports, previews")
    transport: TransportKind = Field(default=TransportKind.file, description="smtp|file|console")
    outbox_dir: Path | None = Field(default=None, description="file transport dir (var/outbox)")

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: SmtpSecurity = SmtpSecurity.none
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    smtp_connect_timeout_s: float = Field(default=10.0, gt=0)
    smtp_validate_certs: bool = True
    smtp_helo_name: str | None = None

    http_timeout_s: float = Field(default=10.0, gt=0)
    public_base_url: str | None = Field(
        default=None, description="public URL of the tracking endpoints, e.g. https://mt.acme.com"
    )
    # Keys (scheduler/keys.py): with a public URL the key must be set and >= 32 bytes.
    secret_key: SecretStr | None = Field(
        default=None, description="HMAC key (>= 32 bytes) for links; `martech keygen` prints one")
    previous_secret_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="rotated-out keys that still verify (comma-separated)")
    render_budget_ms: int = Field(
        default=1000, gt=0, description="work budget of rendering one message's templates")
    calendar_token: SecretStr | None = Field(
        default=None, description="secret of the iCalendar feed URL /calendar/<token>.ics; "
        "change it to revoke the URL (unset: no feed)")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8025, ge=0, le=65535)
    http_idle_timeout_s: float = Field(
        default=15.0, gt=0, description="close connections idle or still sending headers")
    http_request_timeout_s: float = Field(
        default=10.0, gt=0, description="answer 408 to a request (body included) taking longer")
    unsubscribe_posts_per_min: int = Field(
        default=10, ge=0, description="per client address; 0 turns the limit off")
    http_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="reverse proxies whose X-Forwarded-For names the client (comma-separated)")
    http_trust_forwarded: bool = Field(
        default=False, description="behind a reverse proxy: client address from X-Forwarded-For"
    )
    dashboard_token: SecretStr | None = Field(
        default=None, description="password/token for /, /reports/ (unset: those pages are off)"
    )
    report_timezone: str = Field(default="UTC", description="IANA zone reports show times in")
    retention_raw_age_s: float = Field(
        default=30 * 86400.0, ge=3600, description="raw check results/events kept this long"
    )
    retention_hourly_age_s: float = Field(
        default=400 * 86400.0, ge=86400, description="hourly aggregates kept this long"
    )
    retention_interval_s: float = Field(default=300.0, gt=0, description="rollup every …")

    log_format: LogFormat = LogFormat.text
    log_level: str = "INFO"

    node_name: str = Field(default_factory=socket.gethostname)
    reload_poll_s: float = Field(default=2.0, gt=0)
    shutdown_timeout_s: float = Field(default=8.0, gt=0)
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    workers: int | None = Field(
        default=None, ge=1,
        description="processes sending on this node: the service plus workers - 1 send "
                    "helpers (unset: the number of cores on PostgreSQL, 1 on SQLite)",
    )
    delivery_lease_s: float = Field(
        default=30.0, ge=1.0,
        description="a claimed batch of deliveries whose sender stops renewing it for this "
                    "long (the database's clock) is adopted by a live node",
    )

    # -- deliverability (issue 12): DKIM, bounces and complaints that come back later --------
    dkim_private_key_file: Path | None = Field(
        default=None, description="PEM RSA key; with selector and domain, every message is signed")
    dkim_selector: str | None = Field(default=None, description="e.g. mt2026")
    dkim_domain: str | None = Field(default=None, description="d= of the signature, e.g. acme.com")
    bounce_address: str | None = Field(
        default=None, description="bounces@acme.com: Return-Path becomes bounces+<token>@acme.com")
    feedback_id_sender: str = Field(default="martech", description="last field of Feedback-ID")
    inbound_smtp_enabled: bool = Field(
        default=False, description="receive bounces, complaints and mailto: unsubscribes")
    inbound_smtp_host: str = "127.0.0.1"
    inbound_smtp_port: int = Field(default=2525, ge=0, le=65535)
    inbound_max_message_bytes: int = Field(default=10_000_000, gt=0)
    imap_host: str | None = Field(default=None, description="poll this mailbox for bounces")
    imap_port: int = Field(default=993, ge=0, le=65535)
    imap_security: ImapSecurity = ImapSecurity.tls
    imap_validate_certs: bool = True
    imap_user: str | None = None
    imap_password: SecretStr | None = None
    imap_folder: str = "INBOX"
    imap_poll_s: float = Field(default=60.0, gt=0)
    imap_timeout_s: float = Field(default=30.0, gt=0)
    soft_bounce_limit: int = Field(default=3, ge=1, description="soft bounces that suppress")
    soft_bounce_window_days: float = Field(default=30.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("expected an SQLAlchemy URL like sqlite:///var/martech.db")
        return value

    @field_validator("previous_secret_keys", "http_trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # One env variable or secret file: comma- or whitespace-separated, a JSON list also works.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [v for v in re.split(r"[\s,]+", text) if v]
        if isinstance(value, SecretStr):
            return cls._split_list(value.get_secret_value())
        return value

    @property
    def resolved_workers(self) -> int:
        """MARTECH_WORKERS, else the cores on PostgreSQL and 1 on SQLite: an SQLite file has
        one write lock, and every claim, mark and outcome is a write, so more processes would
        queue for it (and add lock waits) rather than send more."""
        if self.workers is not None:
            return self.workers
        if self.database_url.startswith("postgresql"):
            return os.cpu_count() or 1
        return 1

    @property
    def resolved_outbox_dir(self) -> Path:
        return self.outbox_dir or self.var_dir / "outbox"

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain values, every secret replaced by ``********``."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "********" if value.get_secret_value() else ""
            elif name == "previous_secret_keys":
                value = ["********" for _key in value]
            elif name == "database_url":
                value = mask_url(value)
            elif isinstance(value, Path | StrEnum):
                value = str(value)
            out[name] = value
        return out


def mask_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host`` URLs."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:********@{host}"
    return url


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
