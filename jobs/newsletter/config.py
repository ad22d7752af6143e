"""What a marketer may write in a ``kind: newsletter`` campaign file."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from scheduler.config.base import ScheduleConfig, StrictModel, TimezoneName, check_timezone
from scheduler.config.campaigns import CampaignBase, UtmConfig
from scheduler.durations import Duration
from scheduler.schedules import Schedule, local_datetime

# ``timezone: recipient``: each delivery is due at the slot's wall-clock time in its
# recipient's zone (jobs/newsletter/zones.py); the run itself fires in the earliest zone.
RECIPIENT = "recipient"
EARLIEST_ZONE = "Etc/GMT-14"


def _zone_or_recipient(value: str) -> str:
    if value == RECIPIENT:
        return value
    try:
        return check_timezone(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, or recipient (each recipient's own zone)") from None


ZoneOrRecipient = Annotated[str, AfterValidator(_zone_or_recipient)]


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


class TrackConfig(StrictModel):
    """Click and open tracking; only active when MARTECH_PUBLIC_BASE_URL is set."""

    clicks: bool = Field(default=True, description="send links through the /c/ redirect")
    opens: bool = Field(default=True, description="add a 1x1 pixel that records opens")


class RampConfig(StrictModel):
    """A gentle resume: after a pause longer than ``after``, sending climbs from ``start`` of
    the rate to the full rate over ``over`` (a sudden burst from a quiet sender looks like spam
    to mailbox providers)."""

    enabled: bool = True
    after: Duration = Field(default=timedelta(hours=6), description="pauses at least this long")
    over: Duration = Field(default=timedelta(hours=2), description="time to reach the full rate")
    start: float = Field(default=0.1, gt=0, le=1, description="share of the rate at first")
    unlimited_rate_per_s: float = Field(
        default=20.0, gt=0, description="the full rate to ramp to when send has no rate limit")


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
    ramp: RampConfig = Field(default_factory=RampConfig)


class ErrorBudgetConfig(StrictModel):
    """Pause when more than ``max_failure_ratio`` of the last ``window`` sends failed."""

    max_failure_ratio: float = Field(default=0.2, gt=0, le=1)
    window: int = Field(default=200, ge=10)


class NewsletterSchedule(ScheduleConfig):
    """A newsletter's schedule: a zone, or ``timezone: recipient`` (each reader's own time)."""

    timezone: ZoneOrRecipient = "UTC"
    default_timezone: TimezoneName | None = Field(
        default=None, description="with timezone: recipient, for rows without a valid zone")
    timezone_column: str = Field(
        default="timezone", description="audience column holding each recipient's IANA zone")

    @model_validator(mode="after")
    def _recipient_zone(self) -> NewsletterSchedule:
        if self.timezone == RECIPIENT:
            if self.default_timezone is None:
                raise ValueError("timezone: recipient needs default_timezone (an IANA name "
                                 "for recipients without a valid zone)")
            if self.every is not None:
                raise ValueError("timezone: recipient needs cron or at (a wall-clock time), "
                                 "not every")
        return self

    def to_schedule(self) -> Schedule:
        if self.timezone != RECIPIENT:
            return super().to_schedule()
        zone = EARLIEST_ZONE

        def local(text: str | None) -> Any:
            return local_datetime(text, zone) if text else None

        return Schedule(timezone=zone, cron=self.cron, at=local(self.at), start=local(self.start),
                        end=local(self.end),
                        label=f"each recipient's zone, default {self.default_timezone}")


class NewsletterCampaign(CampaignBase):
    kind: Literal["newsletter"]
    schedule: NewsletterSchedule
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
    check_links: bool = Field(
        default=True, description="check every distinct link before the first message")
    on_broken_links: Literal["pause", "warn"] = Field(
        default="pause", description="pause the campaign (reason broken_links) or only warn")
