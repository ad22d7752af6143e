"""What a marketer may write in a ``kind: post_reminder`` campaign file."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, model_validator

from scheduler.config.base import CronText, LocalDateTimeText, StrictModel, TimezoneName
from scheduler.config.campaigns import CampaignBase, NotifyTarget, UtmConfig
from scheduler.durations import Duration

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

    def schedule_text(self) -> str:
        return f"posts ({self.timezone})"

    @model_validator(mode="after")
    def _has_posts(self) -> PostReminderCampaign:
        if not (self.posts or self.calendar or self.series):
            raise ValueError("give posts, calendar or series")
        return self
