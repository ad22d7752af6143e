"""What a report says, as plain data: the HTML, CSV, JSON and e-mail are all drawn from it.

The JSON form (:meth:`Report.to_json`) is the documented, stable schema
(docs/report-schema.md): fields are only ever added.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

SCHEMA_VERSION = 1
POSTED_GRACE = timedelta(minutes=15)  # a post marked done this late still counts on time


def rate(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def change(now: float | None, before: float | None) -> float | None:
    """Relative change in %, None when there is nothing to compare with."""
    if now is None or before is None or before == 0:
        return None
    return round(100.0 * (now - before) / before, 1)


@dataclass
class Figures:
    """Counts of one campaign or run. Opens/clicks are unique deliveries, by traffic class."""

    audience: int = 0
    sent: int = 0  # handed to the relay: delivered + failed + bounced + unknown
    delivered: int = 0
    failed: int = 0
    bounced: int = 0
    suppressed: int = 0
    unknown: int = 0
    pending: int = 0
    opens: dict[str, int] = field(default_factory=dict)  # human | machine | suspect
    clicks: dict[str, int] = field(default_factory=dict)  # unique deliveries
    click_events: dict[str, int] = field(default_factory=dict)
    unsubscribes: int = 0
    send_duration_s: float = 0.0

    @property
    def open_rate(self) -> float | None:
        return rate(self.opens.get("human", 0), self.delivered)

    @property
    def click_rate(self) -> float | None:
        return rate(self.clicks.get("human", 0), self.delivered)

    @property
    def click_to_open_rate(self) -> float | None:
        return rate(self.clicks.get("human", 0), self.opens.get("human", 0))

    @property
    def unsubscribe_rate(self) -> float | None:
        return rate(self.unsubscribes, self.delivered)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "open_rate": self.open_rate, "click_rate": self.click_rate,
                "click_to_open_rate": self.click_to_open_rate,
                "unsubscribe_rate": self.unsubscribe_rate}


COMPARED = ("sent", "delivered", "open_rate", "click_rate", "click_to_open_rate",
            "unsubscribes", "send_duration_s")


def changes(now: Figures, before: Figures | None) -> dict[str, float | None]:
    if before is None:
        return dict.fromkeys(COMPARED)
    return {k: change(getattr(now, k), getattr(before, k)) for k in COMPARED}


@dataclass
class RunSection:
    id: int
    scheduled_at: datetime
    status: str
    detail: str | None
    started_at: datetime | None
    finished_at: datetime | None
    figures: Figures
    change: dict[str, float | None] = field(default_factory=dict)  # against the previous run


@dataclass
class PauseSpan:
    reason: str
    start: datetime
    end: datetime | None  # None: still paused at the end of the period
    seconds: float
    detail: str = ""


@dataclass
class CampaignSection:
    name: str
    kind: str
    figures: Figures
    previous: Figures | None
    change: dict[str, float | None]
    top_links: list[dict[str, Any]] = field(default_factory=list)
    runs: list[RunSection] = field(default_factory=list)
    pauses: list[PauseSpan] = field(default_factory=list)
    paused_s: dict[str, float] = field(default_factory=dict)  # by reason, within the period
    not_sent_runs: list[dict[str, Any]] = field(default_factory=list)  # held/skipped/missed/…
    paused_now: list[str] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)  # every other event kind, by count
    reputation: dict[str, Any] = field(default_factory=dict)  # complaint rate: reputation.py

    @property
    def anchor(self) -> str:
        return "c-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in self.name)


@dataclass
class Incident:
    check: str
    start: datetime
    end: datetime | None
    duration_s: float
    detail: str
    campaigns: list[str]
    held_sends: int
    held_runs: int


@dataclass
class CheckSection:
    name: str
    uptime_pct: float | None  # ok ÷ (ok + fail) time; maintenance and unknown left out
    seconds: dict[str, float]  # ok | fail | unknown | maintenance | no_data
    results: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    previous_uptime_pct: float | None
    incidents: list[Incident] = field(default_factory=list)


@dataclass
class PostSection:
    campaign: str
    post_id: str
    due_at: datetime | None
    reminders_sent: int
    held: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    broken_links: list[str]
    posted_at: datetime | None

    @property
    def on_time(self) -> bool | None:
        if self.posted_at is None or self.due_at is None:
            return None
        return self.posted_at <= self.due_at + POSTED_GRACE


@dataclass
class Series:
    """The joined chart: sends per hour per campaign, with incidents, maintenance, pauses."""

    hours: list[datetime]
    sends: dict[str, list[int]]
    incidents: list[dict[str, Any]]
    maintenance: list[dict[str, Any]]
    pauses: list[dict[str, Any]]


@dataclass
class Headline:
    name: str
    label: str
    value: float | None
    previous: float | None
    unit: str = ""  # "%" or ""
    good: str = "up"  # which direction is good: up | down

    @property
    def change(self) -> float | None:
        if self.unit == "%":  # rates and uptime change in points, not in % of themselves
            if self.value is None or self.previous is None:
                return None
            return round(self.value - self.previous, 2)
        return change(self.value, self.previous)


@dataclass
class Report:
    name: str
    since: datetime
    until: datetime
    generated_at: datetime
    timezone: str
    headline: list[Headline]
    campaigns: list[CampaignSection]
    checks: list[CheckSection]
    posts: list[PostSection]
    series: Series
    agents: dict[str, dict[str, int]] = field(default_factory=dict)  # machine name -> kind -> n

    @property
    def incidents(self) -> list[Incident]:
        return sorted((i for c in self.checks for i in c.incidents), key=lambda i: i.start)

    def to_json(self) -> dict[str, Any]:
        def dt(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        def clean(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [clean(v) for v in value]
            return value

        campaigns = []
        for c in self.campaigns:
            body = clean(asdict(c))
            body["anchor"] = c.anchor
            body["figures"] = c.figures.to_json()
            body["previous"] = c.previous.to_json() if c.previous else None
            for run, section in zip(body["runs"], c.runs, strict=True):
                run["figures"] = section.figures.to_json()
            campaigns.append(body)
        return {
            "schema": SCHEMA_VERSION,
            "report": self.name, "since": dt(self.since), "until": dt(self.until),
            "generated_at": dt(self.generated_at), "timezone": self.timezone,
            "headline": [{**asdict(h), "change": h.change} for h in self.headline],
            "campaigns": campaigns,
            "checks": [clean(asdict(c)) for c in self.checks],
            "posts": [{**clean(asdict(p)), "on_time": p.on_time} for p in self.posts],
            "series": clean(asdict(self.series)),
            "machine_agents": self.agents,
        }



# The charts the report template shows (jobs/report/charts.py draws them); validate renders
# an empty report with placeholders of these names.
CHART_NAMES = ("joined", "uptime")


def empty_report(name: str, now: datetime, timezone: str = "UTC") -> Report:
    """A report with nothing in it: what ``validate`` renders to try the template's own work
    (under the render budget) without data."""
    return Report(name, now, now, now, timezone, [], [], [], [],
                  Series([], {}, [], [], []))
