"""Per post of the social-post reminders: reminders sent, held and why, broken links found,
posted or not and when, on time or late — from the runs, events and posts_done tables.

Reminder runs are keyed ``<campaign>/<post id>/<lead>`` and fire ``lead`` before the post
(the reminders kind's documented schedule key), so the post's time is scheduled_at + lead.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from jobs.report.campaigns import Window
from jobs.report.model import PostSection
from scheduler.clock import utc
from scheduler.durations import parse_duration
from scheduler.store.tables import posts_done, runs, tracking_events

REMINDER_KIND = "post_reminder"


def _post_of(key: str, stats: object) -> tuple[str, timedelta | None]:
    parts = key.rsplit("/", 2)
    post_id = stats.get("post_id") if isinstance(stats, dict) else None
    if len(parts) < 3:
        return str(post_id or key), None
    try:
        lead = parse_duration(parts[2])
    except (ValueError, TypeError):
        lead = None
    return str(post_id or parts[1]), lead


def gather_posts(conn: sa.Connection, names: Sequence[str], window: Window
                 ) -> list[PostSection]:
    r = runs.c
    stmt = (sa.select(r.id, r.campaign, r.schedule_key, r.scheduled_at, r.status, r.detail,
                      r.stats)
            .where(r.campaign.in_(names), r.kind == REMINDER_KIND,
                   r.scheduled_at >= window.since, r.scheduled_at < window.until)
            .order_by(r.scheduled_at))
    posts: dict[tuple[str, str], PostSection] = {}
    run_post: dict[int, tuple[str, str]] = {}
    for row in conn.execute(stmt):
        post_id, lead = _post_of(row.schedule_key, row.stats)
        key = (row.campaign, post_id)
        section = posts.setdefault(key, PostSection(row.campaign, post_id, None, 0, [], [],
                                                    [], None))
        if lead is not None:
            section.due_at = utc(row.scheduled_at) + lead
        run_post[row.id] = key
        entry = {"at": utc(row.scheduled_at), "reason": row.detail or ""}
        if row.status == "done":
            section.reminders_sent += 1
            if row.detail and "held" in row.detail:
                section.held.append(entry)
        elif row.status == "held":
            section.held.append(entry)
        elif row.status in ("skipped", "missed", "failed"):
            section.skipped.append({**entry, "status": row.status})
    if not posts:
        return []
    e = tracking_events.c
    for run_id, url in conn.execute(sa.select(e.run_id, e.url).where(
            e.kind == "link_broken", e.run_id.in_(list(run_post)))):
        links = posts[run_post[run_id]].broken_links
        if url and url not in links:
            links.append(url)
    p = posts_done.c
    for campaign, post_id, done in conn.execute(sa.select(p.campaign, p.post_id, p.done_at)
                                                .where(p.campaign.in_(names))):
        if (campaign, post_id) in posts:
            posts[(campaign, post_id)].posted_at = utc(done)
    return sorted(posts.values(), key=lambda s: (s.due_at or datetime.max.replace(
        tzinfo=window.since.tzinfo), s.campaign, s.post_id))
