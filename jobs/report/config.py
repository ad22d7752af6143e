"""What may be written for a ``kind: report`` (a campaign file or ``reports.yaml``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from scheduler.config.base import ScheduleConfig, TimezoneName
from scheduler.config.campaigns import CampaignBase, ListFile
from scheduler.durations import Duration

ReportFormat = Literal["html", "csv", "json", "recipients"]
# "recipients" (the per-recipient CSV, the only output naming addresses) is opt-in.
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
    timezone: TimezoneName | None = Field(default=None,
                                          description="times shown in; default the setting")


# Reports may also be listed in config/reports.yaml, each entry without `kind:`.
REPORTS_FILE = ListFile("reports.yaml", "reports", "report")
