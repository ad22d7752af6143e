"""Service settings: ``MARTECH_*`` environment variables, an optional ``.env``, secret files."""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TransportKind(StrEnum):
    smtp = "smtp"
    file = "file"
    console = "console"


class SmtpSecurity(StrEnum):
    none = "none"
    starttls = "starttls"
    tls = "tls"


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
    secret_key: SecretStr = Field(
        default=SecretStr("insecure-dev-key-change-me"),
        description="HMAC key for links and unsubscribe tokens",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8025, ge=0, le=65535)

    log_format: LogFormat = LogFormat.text
    log_level: str = "INFO"

    node_name: str = Field(default_factory=socket.gethostname)
    reload_poll_s: float = Field(default=2.0, gt=0)
    shutdown_timeout_s: float = Field(default=8.0, gt=0)
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    delivery_lease_s: float = Field(
        default=30.0, ge=1.0,
        description="a claimed batch of deliveries whose sender stops renewing it for this "
                    "long (the database's clock) is adopted by a live node",
    )

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("expected an SQLAlchemy URL like sqlite:///var/martech.db")
        return value

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
