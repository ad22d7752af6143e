"""The content calendar where people already look: every planned post as an iCalendar event.

Built with the ``icalendar`` library: one VEVENT per post occurrence (networks, the copy as it
will be sent, the UTM-tagged link, when each reminder fires, posted or not), at the post's time
in the campaign's IANA zone (``DTSTART;TZID=…`` plus the VTIMEZONE definitions, so Google
Calendar and Outlook show the right hour across DST), with a display alarm per reminder. The
HTTP app serves it at ``/calendar/<MARTECH_CALENDAR_TOKEN>.ics``: a secret URL one subscribes
to, revoked by changing the setting; any other token — or none configured — is a 404.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from aiohttp import web
from icalendar import Alarm, Calendar, Event

from jobs.reminders.calendar import campaign_posts
from jobs.reminders.config import PostReminderCampaign
from jobs.reminders.plan import Upcoming, lead_text, occurrences
from jobs.reminders.render import copy_for, network_label, render_copy, timestamp_text, utm_link
from jobs.reminders.store import done_ids
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.errors import TemplateError

PAST = timedelta(days=30)  # posts this far back stay in the feed (what was posted when)
AHEAD = timedelta(days=180)
EVENT_LENGTH = timedelta(minutes=15)
PRODID = "-//martech//content calendar//EN"
CONTENT_TYPE = "text/calendar"


def build_calendar(conn: sa.Connection, config: LoadedConfig, now: datetime, *,
                   ahead: timedelta = AHEAD, names: list[str] | None = None) -> Calendar:
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", "martech content calendar")
    for campaign in config.campaigns.values():
        if not isinstance(campaign, PostReminderCampaign) or (names and campaign.name
                                                              not in names):
            continue
        posts, _problems = campaign_posts(campaign, config)
        done = done_ids(conn, campaign.name)
        for item in occurrences(campaign, posts, now - PAST, now + ahead):
            cal.add_component(_event(campaign, item, done.get(item.occurrence_id), now))
    cal.add_missing_timezones()  # a VTIMEZONE for every TZID the events use
    return cal


def _event(campaign: PostReminderCampaign, item: Upcoming, done: datetime | None,
           now: datetime) -> Event:
    tz = ZoneInfo(campaign.timezone)
    start = item.at.astimezone(tz)
    post = item.post
    event = Event()
    event.add("uid", f"{campaign.name}/{item.occurrence_id}@martech")
    event.add("dtstamp", now)
    event.add("dtstart", start)
    event.add("dtend", start + EVENT_LENGTH)
    networks = ", ".join(network_label(n) for n in post.networks)
    event.add("summary", f"{'✓ ' if done else ''}{networks}: {campaign.name}")
    event.add("categories", [network_label(n) for n in post.networks])
    link = utm_link(post.link, post.networks[0], campaign.utm, campaign.name) if post.link \
        else None
    if link:
        event.add("url", link)
    event.add("description", _description(campaign, item, done, start))
    event.add("status", "CONFIRMED")
    event.add("x-martech-campaign", campaign.name)
    event.add("x-martech-posted", "TRUE" if done else "FALSE")
    if done is None:
        for reminder in item.reminders:
            alarm = Alarm()
            alarm.add("action", "DISPLAY")
            alarm.add("trigger", -reminder.lead)
            alarm.add("description", f"Post to {networks} {lead_text(reminder.lead)} from now")
            event.add_component(alarm)
    return event


def _description(campaign: PostReminderCampaign, item: Upcoming, done: datetime | None,
                 start: datetime) -> str:
    post = item.post
    tz = start.tzinfo
    lines = []
    for network in post.networks:
        link = utm_link(post.link, network, campaign.utm, campaign.name) if post.link else ""
        raw = copy_for(post.copy, network)
        variables = {"link": link, "network": network, "campaign": campaign.name,
                     "post_at": timestamp_text(start), "notes": post.notes or "",
                     "image": post.image or ""}
        try:
            text = render_copy(raw, variables)
        except TemplateError:
            text = raw
        lines += [f"{network_label(network)}:", text, ""]
    if post.link:
        lines.append(f"Link: {post.link}")
    if post.image:
        lines.append(f"Image: {post.image}")
    if post.notes:
        lines.append(f"Notes: {post.notes}")
    reminders = ", ".join(f"{lead_text(r.lead)} before ({timestamp_text(r.fire_at.astimezone(tz))})"
                          for r in item.reminders)
    lines.append(f"Reminders: {reminders or 'none'}")
    lines.append(f"Posted: {timestamp_text(done.astimezone(tz))}" if done else
                 f"Not posted yet — mark it: martech posted {campaign.name} "
                 f"--post {item.occurrence_id}")
    return "\n".join(lines)


def feed_bytes(ctx: ServiceContext) -> bytes:
    with ctx.begin() as conn:
        return bytes(build_calendar(conn, ctx.config, ctx.clock.now()).to_ical())


def token_matches(ctx: ServiceContext, token: str) -> bool:
    """Constant time; no token configured means no feed at all."""
    secret = ctx.settings.calendar_token
    expected = secret.get_secret_value() if secret is not None else ""
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def add_routes(app: web.Application, ctx: ServiceContext) -> None:
    async def feed(request: web.Request) -> web.Response:
        if not token_matches(ctx, request.match_info["token"]):
            raise web.HTTPNotFound(text="not found\n")
        body = await ctx.in_thread(feed_bytes, ctx)
        return web.Response(body=body, content_type=CONTENT_TYPE, charset="utf-8",
                            headers={"Cache-Control": "private, max-age=300"})

    app.router.add_get("/calendar/{token}.ics", feed)


def event_count(cal: Any) -> int:
    return sum(1 for c in cal.walk("VEVENT"))
