"""``martech posted`` and ``martech calendar``: the social team's two commands."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich.markup import escape
from rich.table import Table

from jobs.reminders.calendar import campaign_posts
from jobs.reminders.config import PostReminderCampaign
from jobs.reminders.ical import build_calendar, event_count
from jobs.reminders.plan import Upcoming, lead_text, occurrences
from jobs.reminders.store import done_ids, mark_done, run_states
from scheduler.cli import State, console, friendly_errors
from scheduler.clock import Clock, SystemClock, utc
from scheduler.config.loader import LoadedConfig
from scheduler.errors import MartechError, UnknownCampaign
from scheduler.schedules import local_datetime
from scheduler.store import pauses

LOOK_AROUND = timedelta(days=7)  # `posted NAME` alone picks the post nearest now within this


def reminder_campaign(config: LoadedConfig, name: str) -> PostReminderCampaign:
    campaign = config.campaigns.get(name)
    if campaign is None:
        raise UnknownCampaign(name)
    if not isinstance(campaign, PostReminderCampaign):
        raise MartechError(f"campaign {name!r} is a {campaign.kind}, not a post_reminder")
    return campaign


def choose_post(config: LoadedConfig, campaign: PostReminderCampaign, now: datetime,
                post_id: str | None, at: str | None, done: dict[str, datetime]) -> Upcoming:
    """The post occurrence ``posted`` means: by id, by scheduled time, or the nearest open one."""
    posts, _problems = campaign_posts(campaign, config)
    if post_id is not None and "@" not in post_id and not any(p.id == post_id for p in posts):
        known = ", ".join(p.id for p in posts[:10])
        raise MartechError(f"no post {post_id!r} in {campaign.name} (known: {known})")
    exact = next((p for p in posts if p.id == post_id and p.at is not None), None)
    if exact is not None and exact.at is not None and at is None:  # a one-off post, any date
        return occurrences(campaign, [exact], exact.at - timedelta(seconds=1), exact.at)[0]
    window = occurrences(campaign, posts, now - LOOK_AROUND * 5, now + LOOK_AROUND * 5)
    if post_id is not None:
        window = [u for u in window if post_id in (u.post.id, u.occurrence_id)]
    if at is not None:
        try:
            when = local_datetime(at, campaign.timezone)
        except ValueError as exc:
            raise MartechError(f"--at {at!r} is not a date-time like 2026-11-27 10:00") from exc
        window = [u for u in window if abs(u.at - when) < timedelta(minutes=1)]
    if post_id is None and at is None:
        window = [u for u in window if u.occurrence_id not in done
                  and abs(u.at - now) <= LOOK_AROUND]
        window.sort(key=lambda u: abs(u.at - now))
        window = window[:1]
    if not window:
        raise MartechError(f"no matching post in {campaign.name}; see `martech calendar`")
    if len(window) > 1 and post_id is None:
        ids = ", ".join(u.occurrence_id for u in window)
        raise MartechError(f"several posts match ({ids}); choose one with --post")
    if post_id is not None and len(window) > 1:  # a series: the nearest occurrence
        window.sort(key=lambda u: abs(u.at - now))
    return window[0]


def mark_posted(db: Any, config: LoadedConfig, name: str, *, post_id: str | None = None,
                at: str | None = None, clock: Clock | None = None, by: str = "cli"
                ) -> tuple[str, bool]:
    """Record a post as done; return (occurrence id, newly recorded)."""
    campaign = reminder_campaign(config, name)
    now = (clock or SystemClock()).now()
    with db.begin() as conn:
        done = done_ids(conn, campaign.name)
        target = choose_post(config, campaign, now, post_id, at, done)
        added = mark_done(conn, campaign.name, target.occurrence_id, now, by=by)
    return target.occurrence_id, added


def calendar_table(db: Any, config: LoadedConfig, days: float, now: datetime,
                   names: list[str] | None = None) -> Table:
    table = Table("post (local)", "campaign", "post id", "network", "status", "reminders",
                  title=f"Posts in the next {days:g} day(s)", title_justify="left")
    rows: list[tuple[datetime, list[str]]] = []
    with db.begin() as conn:
        paused = pauses.all_reasons(conn)
        for campaign in config.campaigns.values():
            if not isinstance(campaign, PostReminderCampaign):
                continue
            if names and campaign.name not in names:
                continue
            tz = ZoneInfo(campaign.timezone)
            posts, _problems = campaign_posts(campaign, config)
            upcoming = occurrences(campaign, posts, now - timedelta(hours=1),
                                   now + timedelta(days=days))
            done = done_ids(conn, campaign.name)
            states = run_states(conn, {r.key for u in upcoming for r in u.reminders})
            why = ", ".join(p.reason for p in paused.get(campaign.name, []))
            for item in upcoming:
                if item.occurrence_id in done:
                    status = f"done {utc(done[item.occurrence_id]).astimezone(tz):%m-%d %H:%M}"
                elif not campaign.enabled:
                    status = "disabled"
                elif why:
                    status = f"paused ({why})"
                else:
                    status = "due" if item.at <= now else "upcoming"
                reminders = []
                for rem in item.reminders:
                    state = states.get((rem.key, rem.slot))
                    label = state.status if state else ("past" if rem.fire_at <= now else "")
                    reminders.append(f"{lead_text(rem.lead)} "
                                     f"{rem.fire_at.astimezone(tz):%m-%d %H:%M}"
                                     + (f" [{label}]" if label else ""))
                rows.append((item.at, [
                    f"{item.at.astimezone(tz):%a %m-%d %H:%M %Z}", campaign.name,
                    item.occurrence_id, ", ".join(item.post.networks), status,
                    "\n".join(reminders),
                ]))
    for _at, cells in sorted(rows, key=lambda r: r[0]):
        table.add_row(*(escape(cell) for cell in cells))  # "[held]" is text, not markup
    if not rows:
        table.caption = "no posts in this period"
    return table


@click.command()
@click.argument("name")
@click.option("--post", "post_id", help="Post id (see `martech calendar`).")
@click.option("--at", "at", help="The post's scheduled local time, e.g. '2026-11-27 10:00'.")
@click.pass_obj
@friendly_errors
def posted(state: State, name: str, post_id: str | None, at: str | None) -> None:
    """Record a post of campaign NAME as done: its remaining reminders are not sent."""
    config = state.config()
    occurrence, added = mark_posted(state.db(), config, name, post_id=post_id, at=at)
    console.print(f"{name}: {occurrence} marked as posted" if added
                  else f"{name}: {occurrence} was already marked as posted", markup=False)


@click.command()
@click.option("--days", default=14.0, show_default=True, help="How far ahead to look.")
@click.option("--campaign", "names", multiple=True, help="Only this campaign (repeatable).")
@click.option("--ics", "ics_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the posts as an iCalendar file instead (30 days back, --days ahead).")
@click.pass_obj
@friendly_errors
def calendar(state: State, days: float, names: tuple[str, ...], ics_file: Path | None) -> None:
    """Upcoming social posts and their reminders (done, held, sent)."""
    config = state.config()
    for name in names:
        reminder_campaign(config, name)
    now = SystemClock().now()
    if ics_file is not None:
        with state.db().begin() as conn:
            cal = build_calendar(conn, config, now, ahead=timedelta(days=days),
                                 names=list(names) or None)
        ics_file.write_bytes(cal.to_ical())
        console.print(f"wrote {event_count(cal)} post(s) to {ics_file}", markup=False)
        return
    console.print(calendar_table(state.db(), config, days, now, list(names) or None))


def register_cli(group: click.Group) -> None:
    for command in (posted, calendar,):
        group.add_command(command)
