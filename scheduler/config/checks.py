"""What IT may write in ``config/checks.yaml``: checks, guards, maintenance, alerts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, model_validator

from scheduler.config.base import CronText, LocalDateTimeText, Name, StrictModel, TimezoneName
from scheduler.config.campaigns import NotifyTarget
from scheduler.durations import Duration
from scheduler.sizes import Size


class HttpCheck(StrictModel):
    url: str
    method: Literal["GET", "HEAD", "POST"] = "GET"
    status: list[int] = Field(default_factory=lambda: [200])
    max_response_time: Duration | None = None
    body_contains: str | None = None
    body_matches: str | None = Field(default=None, description="a regular expression")
    json_field: dict[str, Any] | None = Field(
        default=None, description='dotted path to expected value, e.g. {"status": "ok"}'
    )
    headers: dict[str, str] = Field(default_factory=dict, description="request headers")
    expect_headers: dict[str, str] = Field(default_factory=dict)
    follow_redirects: bool = True
    cert_valid_for: Duration | None = None
    verify_tls: bool = True
    ca_file: str | None = Field(default=None, description="PEM file of extra trusted CAs")


class PageCheck(StrictModel):
    """A landing page ready for the traffic: the page and the assets it references, measured.

    The check's ``timeout`` is the total budget for the page and all its assets; each asset
    also has its own ``asset_timeout``. Any limit exceeded or requirement unmet fails the check.
    """

    url: str
    status: list[int] = Field(default_factory=lambda: [200])
    max_weight: Size | None = Field(default=None, description="page + assets, bytes on the wire")
    max_image: Size | None = Field(default=None, description="largest allowed image")
    max_ttfb: Duration | None = Field(default=None, description="time to first byte of the page")
    require_viewport: bool = Field(default=True, description='<meta name="viewport">')
    require_title: bool = True
    require_description: bool = Field(default=True, description='<meta name="description">')
    require_image_dimensions: bool = Field(default=True, description="<img width height>")
    require_compression: bool = Field(default=True, description="gzip/br on text assets")
    require_cache_headers: bool = Field(default=False,
                                        description="Cache-Control/Expires on scripts, styles")
    cdns: list[str] = Field(default_factory=list,
                            description="hosts besides the page's own whose assets are fetched")
    asset_timeout: Duration = Field(default=timedelta(seconds=5))
    max_assets: int = Field(default=100, ge=0, le=1000)
    headers: dict[str, str] = Field(default_factory=dict, description="request headers")
    verify_tls: bool = True
    ca_file: str | None = Field(default=None, description="PEM file of extra trusted CAs")


class TcpCheck(StrictModel):
    host: str
    port: int = Field(ge=1, le=65535)


class DnsCheck(StrictModel):
    name: str
    record_type: Literal["A", "AAAA", "CNAME", "MX", "TXT", "NS"] = "A"
    expect: list[str] = Field(default_factory=list)
    nameserver: str | None = None
    port: int = Field(default=53, ge=1, le=65535)


class SmtpCheck(StrictModel):
    host: str
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    tls: bool = False
    expect_auth: bool = False
    verify_tls: bool = True
    ca_file: str | None = Field(default=None, description="PEM file of extra trusted CAs")


class TlsCheck(StrictModel):
    host: str
    port: int = Field(default=443, ge=1, le=65535)
    server_name: str | None = None
    valid_for: Duration = Field(default=timedelta(days=14))
    verify: bool = True
    ca_file: str | None = Field(default=None, description="PEM file of extra trusted CAs")


class WindowRule(StrictModel):
    """Flapping hosts: down when ``failures`` of the last ``of`` results failed."""

    failures: int = Field(ge=1)
    of: int = Field(ge=1)

    @model_validator(mode="after")
    def _sane(self) -> WindowRule:
        if self.failures > self.of:
            raise ValueError("failures cannot exceed of")
        return self


class CheckDefaults(StrictModel):
    interval: Duration = Field(default=timedelta(seconds=30))
    timeout: Duration = Field(default=timedelta(seconds=5))
    retry_interval: Duration = Field(default=timedelta(seconds=5))
    failure_threshold: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=2, ge=1)


PROBE_KINDS = ("http", "tcp", "dns", "smtp", "tls", "page")


class CheckConfig(StrictModel):
    """One check: exactly one of http/tcp/dns/smtp/tls/page plus optional timing overrides."""

    http: HttpCheck | None = None
    page: PageCheck | None = None
    tcp: TcpCheck | None = None
    dns: DnsCheck | None = None
    smtp: SmtpCheck | None = None
    tls: TlsCheck | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    retry_interval: Duration | None = None
    failure_threshold: int | None = Field(default=None, ge=1)
    success_threshold: int | None = Field(default=None, ge=1)
    window: WindowRule | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _one_probe(self) -> CheckConfig:
        given = [k for k in PROBE_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(PROBE_KINDS)}")
        return self

    @property
    def probe_kind(self) -> str:
        for kind in PROBE_KINDS:
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("validated above")


class Selector(StrictModel):
    """Which campaigns: by name, tag or kind — or ``all``."""

    names: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    kind: str | None = None
    all: bool = False

    def matches(self, name: str, kind: str, tags: list[str]) -> bool:
        if self.all:
            return True
        return (
            name in self.names
            or bool(set(tags) & set(self.tags))
            or (self.kind is not None and self.kind == kind)
        )


class GuardConfig(StrictModel):
    check: str
    pauses: Selector | Literal["all"]

    def selector(self) -> Selector:
        return Selector(all=True) if self.pauses == "all" else self.pauses


class MaintenanceWindow(StrictModel):
    """One-off (start + end/duration) or recurring (cron + duration) maintenance."""

    name: Name
    start: LocalDateTimeText | None = None
    end: LocalDateTimeText | None = None
    cron: CronText | None = None
    duration: Duration | None = None
    timezone: TimezoneName = "UTC"
    pauses: Selector | Literal["all"] = "all"

    @model_validator(mode="after")
    def _shape(self) -> MaintenanceWindow:
        if self.cron is None and self.start is None:
            raise ValueError("give start (one-off) or cron (recurring)")
        if self.cron is not None and self.duration is None:
            raise ValueError("a recurring window needs duration")
        if self.start is not None and self.end is None and self.duration is None:
            raise ValueError("a one-off window needs end or duration")
        return self

    def selector(self) -> Selector:
        return Selector(all=True) if self.pauses == "all" else self.pauses


AlertEvent = Literal["down", "up", "unknown", "maintenance"]
ALERT_EVENTS: tuple[AlertEvent, ...] = ("down", "up", "unknown", "maintenance")


class AlertRoute(NotifyTarget):
    on: list[AlertEvent] = Field(default_factory=lambda: list(ALERT_EVENTS))


class ChecksFile(StrictModel):
    defaults: CheckDefaults = Field(default_factory=CheckDefaults)
    checks: dict[Name, CheckConfig] = Field(default_factory=dict)
    connectivity: CheckConfig | None = Field(
        default=None, description="the guard's own network; failing means 'unknown', not down"
    )
    guards: list[GuardConfig] = Field(default_factory=list)
    maintenance: list[MaintenanceWindow] = Field(default_factory=list)
    alerts: list[AlertRoute] = Field(default_factory=list)
    remind_every: Duration | None = Field(default=timedelta(hours=1))
    max_concurrent_checks: int = Field(default=50, ge=1, le=10_000)
    alert_from: str = "martech guard <martech@localhost>"
