"""Which reminders exist: one schedule per (post, lead time), and the occurrences ahead."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from jobs.reminders.calendar import Post
from jobs.reminders.config import PostReminderCampaign
from scheduler.kinds import ScheduleSpec
from scheduler.schedules import Schedule

KIND = "post_reminder"


def lead_text(lead: timedelta) -> str:
    """``1d``, ``1h``, ``90m``, ``0m``: the largest unit that divides the lead exactly."""
    seconds = int(lead.total_seconds())
    if seconds == 0:
        return "0m"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def due_text(lead: timedelta) -> str:
    if lead <= timedelta(0):
        return "now"
    seconds = int(lead.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"in {n} {unit}{'s' if n != 1 else ''}"
    return f"in {lead}"


def schedule_key(campaign: str, post_id: str, lead: timedelta) -> str:
    return f"{campaign}/{post_id}/{lead_text(lead)}"


def split_key(key: str) -> tuple[str, str]:
    """``campaign/post-id/lead`` → (post_id, lead text). Post ids never contain ``/``."""
    _campaign, post_id, lead = key.rsplit("/", 2)
    return post_id, lead


def post_schedule(post: Post, timezone: str, lead: timedelta) -> Schedule:
    if post.cron is not None:
        return Schedule(timezone=timezone, cron=post.cron, start=post.start, end=post.end,
                        lead=lead)
    return Schedule(timezone=timezone, at=post.at, lead=lead)


def specs_for(campaign: PostReminderCampaign, posts: list[Post]) -> list[ScheduleSpec]:
    out = []
    for post in posts:
        for lead in sorted(set(campaign.remind_before), reverse=True):
            out.append(ScheduleSpec(
                key=schedule_key(campaign.name, post.id, lead), campaign=campaign.name,
                kind=KIND, schedule=post_schedule(post, campaign.timezone, lead),
                misfire_grace=campaign.misfire_grace, on_pause=campaign.on_pause,
                max_delay=campaign.max_delay,
            ))
    return out


@dataclass(frozen=True)
class Reminder:
    lead: timedelta
    fire_at: datetime
    key: str
    slot: str


@dataclass(frozen=True)
class Upcoming:
    post: Post
    at: datetime  # aware UTC
    slot: str  # local wall-clock slot of the post
    occurrence_id: str
    reminders: tuple[Reminder, ...]


def occurrences(campaign: PostReminderCampaign, posts: list[Post], start: datetime,
                end: datetime, limit_per_post: int = 500) -> list[Upcoming]:
    """Posts due in ``(start, end]`` with every reminder of each, soonest first."""
    out: list[Upcoming] = []
    leads = sorted(set(campaign.remind_before), reverse=True)
    for post in posts:
        base = post_schedule(post, campaign.timezone, timedelta(0))
        for occ in base.between(start, end, limit=limit_per_post):
            reminders = tuple(
                Reminder(lead, occ.at - lead, schedule_key(campaign.name, post.id, lead),
                         occ.slot)
                for lead in leads
            )
            out.append(Upcoming(post, occ.at, occ.slot, post.occurrence_id(occ.slot),
                                reminders))
    out.sort(key=lambda u: (u.at, u.post.id))
    return out
