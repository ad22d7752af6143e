"""What a marketer may write in ``config/campaigns/*.yaml``."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from scheduler.config.base import (
    CronText,
    LocalDateTimeText,
    Name,
    ScheduleConfig,
    StrictModel,
    TimezoneName,
)
from scheduler.durations import Duration


class AudienceConfig(StrictModel):
    """Who receives a newsletter: a CSV file, or a SQL query against a database."""

    csv: str | None = Field(default=None, description="path relative to the config directory")
    sql: str | None = Field(default=None, description="SELECT returning an email column")
    database: str | None = Field(
        default=None, description="SQLAlchemy URL, or ${ENV_VAR} holding one"
    )
    email_column: str = "email"
    delimiter: str = ","

    @model_validator(mode="after")
    def _one_source(self) -> AudienceConfig:
        if (self.csv is None) == (self.sql is None):
            raise ValueError("give exactly one of csv or sql")
        if self.sql is not None and not self.database:
            raise ValueError("sql needs database: (a URL or ${ENV_VAR})")
        return self


class SegmentConfig(StrictModel):
    """Which audience rows receive the campaign. Tags come from a ``tags`` column (a|b|c)."""

    tags_any: list[str] = Field(default_factory=list)
    tags_all: list[str] = Field(default_factory=list)
    tags_none: list[str] = Field(default_factory=list)
    where: dict[str, str] = Field(default_factory=dict, description="column equals value")


class UtmConfig(StrictModel):
    source: str | None = None
    medium: str | None = None
    campaign: str | None = Field(default=None, description="defaults to the campaign name")
    content: str | None = None
    term: str | None = None


class TrackConfig(StrictModel):
    """Click and open tracking; only active when MARTECH_PUBLIC_BASE_URL is set."""

    clicks: bool = Field(default=True, description="send links through the /c/ redirect")
    opens: bool = Field(default=True, description="add a 1x1 pixel that records opens")


class SendConfig(StrictModel):
    rate_per_s: float | None = Field(default=None, gt=0)
    rate_per_h: float | None = Field(default=None, gt=0)
    connections: int = Field(default=4, ge=1, le=64)
    batch_size: int = Field(default=200, ge=1, le=10_000)
    max_attempts: int = Field(default=5, ge=1, le=50)
    retry_backoff: Duration = Field(default=timedelta(seconds=30))
    on_pause: Literal["hold", "skip"] = "hold"
    max_delay: Duration = Field(
        default=timedelta(days=1), description="a held run older than this is skipped"
    )
    delivery: Literal["at_most_once", "at_least_once"] = "at_most_once"


class ErrorBudgetConfig(StrictModel):
    """Pause when more than ``max_failure_ratio`` of the last ``window`` sends failed."""

    max_failure_ratio: float = Field(default=0.2, gt=0, le=1)
    window: int = Field(default=200, ge=10)


class CampaignBase(StrictModel):
    name: Name
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    requires: list[str] = Field(default_factory=list, description="checks this campaign needs")
    enabled: bool = True


class NewsletterCampaign(CampaignBase):
    kind: Literal["newsletter"]
    schedule: ScheduleConfig
    audience: AudienceConfig
    segment: SegmentConfig | None = None
    from_: str = Field(alias="from", description='e.g. "Acme News <news@acme.example>"')
    reply_to: str | None = None
    subject: str = Field(description="a template, e.g. 'Hello {{ first_name }}'")
    template: str = Field(description="name under templates/email/ (.html and optional .txt)")
    context: dict[str, Any] = Field(default_factory=dict)
    context_file: str | None = None
    utm: UtmConfig | None = None
    track: TrackConfig = Field(default_factory=TrackConfig)
    send: SendConfig = Field(default_factory=SendConfig)
    error_budget: ErrorBudgetConfig = Field(default_factory=ErrorBudgetConfig)


class NotifyTarget(StrictModel):
    """Where a reminder or alert goes: an e-mail address or a webhook URL."""

    email: str | None = None
    webhook: str | None = None
    format: Literal["slack", "json"] = "slack"

    @model_validator(mode="after")
    def _one_target(self) -> NotifyTarget:
        if (self.email is None) == (self.webhook is None):
            raise ValueError("give exactly one of email or webhook")
        return self


Networks = Annotated[list[str], Field(min_length=1)]


class PostConfig(StrictModel):
    """One social post: when, where, what."""

    id: str | None = Field(
        default=None, description="stable id (letters, digits, - _ . :); defaults to at + network"
    )
    at: LocalDateTimeText
    network: str | list[str]
    copy_: str | dict[str, str] = Field(alias="copy", description="template; per network ok")
    link: str | None = None
    image: str | None = None
    notes: str | None = None


class PostSeriesConfig(StrictModel):
    """A recurring post, e.g. every Tuesday at 10:00."""

    id: str | None = Field(default=None, description="stable id; defaults to cron + network")
    cron: CronText
    start: LocalDateTimeText | None = Field(default=None, description="first post not before")
    end: LocalDateTimeText | None = Field(default=None, description="no post after")
    network: str | list[str]
    copy_: str | dict[str, str] = Field(alias="copy")
    link: str | None = None
    image: str | None = None
    notes: str | None = None


class PostReminderCampaign(CampaignBase):
    kind: Literal["post_reminder"]
    timezone: TimezoneName = "UTC"
    posts: list[PostConfig] = Field(default_factory=list)
    calendar: str | None = Field(default=None, description="CSV or YAML file of posts")
    series: list[PostSeriesConfig] = Field(default_factory=list)
    remind_before: list[Duration] = Field(default_factory=lambda: [timedelta(hours=1)])
    notify: list[NotifyTarget] = Field(min_length=1)
    utm: UtmConfig | None = None
    check_link: bool = True
    from_: str = Field(default="martech <martech@localhost>", alias="from",
                       description="sender of reminder e-mails")
    misfire_grace: Duration = Field(default=timedelta(minutes=30))
    on_pause: Literal["hold", "skip"] = "hold"
    max_delay: Duration = Field(default=timedelta(hours=2))

    @model_validator(mode="after")
    def _has_posts(self) -> PostReminderCampaign:
        if not (self.posts or self.calendar or self.series):
            raise ValueError("give posts, calendar or series")
        return self


ReportFormat = Literal["html", "csv", "json"]
REPORT_FORMATS: tuple[ReportFormat, ...] = ("html", "csv", "json")


class ReportCampaign(CampaignBase):
    """A tracking report, written to var/reports and optionally e-mailed."""

    kind: Literal["report"]
    schedule: ScheduleConfig
    period: Duration = Field(default=timedelta(days=7))
    formats: list[ReportFormat] = Field(default_factory=lambda: list(REPORT_FORMATS))
    campaigns: list[str] = Field(default_factory=list, description="empty means all")
    email: list[str] = Field(default_factory=list)
    from_: str = Field(default="martech <martech@localhost>", alias="from")


Campaign = Annotated[
    NewsletterCampaign | PostReminderCampaign | ReportCampaign, Field(discriminator="kind")
]

__all__ = [
    "AudienceConfig",
    "Campaign",
    "CampaignBase",
    "ErrorBudgetConfig",
    "LocalDateTimeText",
    "NewsletterCampaign",
    "NotifyTarget",
    "PostConfig",
    "PostReminderCampaign",
    "PostSeriesConfig",
    "ReportCampaign",
    "SegmentConfig",
    "SendConfig",
    "UtmConfig",
]
