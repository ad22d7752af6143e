"""Social-post reminders (issue 5): nudge the social team with the right copy at the right time.

One schedule per (post, lead time). A run: skip if the post is already done, check the link,
render the copy per network (UTM-tagged link), and enqueue one outbox row per notify target in
one transaction, each with the dedupe key ``reminder:<run_id>:<target>`` — so a run executed
again after a crash never queues a reminder twice, and the outbox never loses one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from jobs.reminders import ical
from jobs.reminders.calendar import Post, campaign_posts
from jobs.reminders.cli import register_cli
from jobs.reminders.config import PostReminderCampaign
from jobs.reminders.links import LinkStatus, check_link
from jobs.reminders.plan import KIND, due_text, lead_text, specs_for, split_key
from jobs.reminders.render import (
    TEMPLATE,
    ReminderView,
    copy_for,
    json_body,
    network_label,
    render_copy,
    render_email,
    sample_view,
    slack_text,
    template_env,
    timestamp_text,
    utm_link,
)
from jobs.reminders.store import PauseEvent, done_at, event, has_event, pause_history
from scheduler import outbox
from scheduler.clock import utc
from scheduler.config.campaigns import NotifyTarget
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.errors import Problem, TemplateError
from scheduler.kinds import Registry, RunResult, ScheduleSpec
from scheduler.settings import Settings
from scheduler.store import outbox as outbox_store
from scheduler.store.runs import RunRow

log = logging.getLogger("martech.post_reminder")

_REASONS = re.compile(r"paused \(([^()]*)\)")


def target_key(target: NotifyTarget) -> str:
    """The target part of a dedupe key; a webhook URL is a credential, so only its hash."""
    if target.email:
        return target.email.strip().lower()
    assert target.webhook is not None
    digest = hashlib.sha256(f"{target.format} {target.webhook}".encode()).hexdigest()[:16]
    return f"webhook:{digest}"


def describe_reason(reason: str, detail: str | None) -> str:
    kind, _, name = reason.partition(":")
    text = {
        "guard": f"the check “{name}” was down",
        "maintenance": f"the maintenance window “{name}” was on",
        "manual": "the campaign was paused by hand",
        "error_budget": "too many sends had failed",
        "smtp_unreachable": "the mail relay was unreachable",
        "broken_links": "links in the campaign were broken",
    }.get(kind, reason)
    return f"{text} ({detail})" if detail else text


def held_note(run: RunRow, history: list[PauseEvent], tz: ZoneInfo, now: datetime) -> str | None:
    """"Held from … to … because …" when the engine held this run, else None."""
    if not run.detail or "held" not in run.detail:
        return None
    found = _REASONS.search(run.detail)
    reasons = [r.strip() for r in found.group(1).split(",")] if found else []
    whys = []
    for reason in reasons:
        detail = None
        for ev in reversed(history):
            if ev.kind == "paused" and ev.detail.startswith(reason):
                detail = ev.detail[len(reason):].lstrip(": ").strip() or None
                break
        whys.append(describe_reason(reason, detail))
    since = utc(run.scheduled_at)
    minutes = max(0, int((now - since).total_seconds() // 60))
    why = "; ".join(whys) or "the campaign was paused"
    return (f"This reminder was held from {since.astimezone(tz):%H:%M} to "
            f"{now.astimezone(tz):%H:%M %Z} ({minutes} min) because {why}.")


class PostReminderKind:
    kind = KIND
    campaign_model = PostReminderCampaign

    def schedules(self, campaign: Any, config: LoadedConfig) -> list[ScheduleSpec]:
        posts, _problems = campaign_posts(campaign, config)
        return specs_for(campaign, posts)

    def validate(self, campaign: Any, config: LoadedConfig, settings: Settings) -> list[Problem]:
        _posts, problems = campaign_posts(campaign, config)
        env = template_env(settings.templates_dir)
        for suffix in ("txt", "html"):
            try:
                env.get_template(f"{TEMPLATE}.{suffix}")
            except Exception as exc:  # missing file or syntax error, both fatal for reminders
                problems.append(Problem(str(settings.templates_dir / f"{TEMPLATE}.{suffix}"),
                                        getattr(exc, "lineno", None), "template", str(exc)))
        if not problems:  # rendered once, under the work budget every reminder has
            try:
                render_email(sample_view(campaign.name), settings.templates_dir)
            except TemplateError as exc:
                problems.append(Problem(str(settings.templates_dir / exc.template), exc.line,
                                        "template", exc.message))
        return problems

    def campaign_links(self, campaign: Any, config: LoadedConfig, settings: Settings
                       ) -> list[str]:
        """Each post's link, as the reminder checks it (``martech validate --links``)."""
        posts, _problems = campaign_posts(campaign, config)
        return list(dict.fromkeys(p.link for p in posts if p.link))

    async def execute(self, ctx: ServiceContext, campaign: Any, run: RunRow) -> RunResult:
        """Send one reminder: the (post, lead) named by the run's schedule key.

        ``martech run-job`` on a reminder campaign (key ``<campaign>#manual``) names no post:
        it fails with a hint rather than guessing which post to remind about.
        """
        assert isinstance(campaign, PostReminderCampaign)
        if run.schedule_key.count("/") < 2:
            return RunResult("failed", "run-job on a post_reminder campaign: reminders fire "
                                       "per post; use `martech calendar` to see them")
        posts, _problems = campaign_posts(campaign, ctx.config)
        post_id, lead_name = split_key(run.schedule_key)
        post = next((p for p in posts if p.id == post_id), None)
        leads = {lead_text(lead): lead for lead in campaign.remind_before}
        if post is None or lead_name not in leads:
            return RunResult("skipped", f"post {post_id} / lead {lead_name} no longer configured")
        lead = leads[lead_name]
        occurrence = post.occurrence_id(run.local_slot)
        post_at = utc(run.scheduled_at) + lead
        tz = ZoneInfo(campaign.timezone)

        def _already_done() -> datetime | None:
            with ctx.begin() as conn:
                return done_at(conn, campaign.name, occurrence)

        done = await ctx.in_thread(_already_done)
        if done is not None:
            return RunResult("skipped", f"post {occurrence} already marked done "
                                        f"({timestamp_text(done.astimezone(tz))})",
                             {"post_id": occurrence})

        link_status: LinkStatus | None = None
        if campaign.check_link and post.link:
            link_status = await check_link(ctx, post.link)

        def _history() -> list[PauseEvent]:
            with ctx.begin() as conn:
                return pause_history(conn, campaign.name, ctx.clock.now())

        now = ctx.clock.now()
        note = held_note(run, await ctx.in_thread(_history), tz, now)
        def _render() -> tuple[ReminderView, tuple[str, str, str]]:
            # In a thread: templates have a work budget, and the loop must not wait on it.
            view = self._view(campaign, post, occurrence, lead, post_at, link_status, note, now)
            return view, render_email(view, ctx.settings.templates_dir)

        view, (subject, text, html) = await ctx.in_thread(_render)
        rows = [(t, self._payload(t, campaign, view, post_at, subject, text, html, run.id))
                for t in campaign.notify]

        queued, late_done = await ctx.in_thread(
            self._enqueue, ctx, campaign, run, occurrence, view, rows, now)
        if late_done is not None:
            return RunResult("skipped", f"post {occurrence} marked done before sending",
                             {"post_id": occurrence})
        outbox.wake(ctx)
        return self._result(campaign, run, occurrence, lead_name, view, len(rows), queued, note)

    @staticmethod
    def _enqueue(ctx: ServiceContext, campaign: PostReminderCampaign, run: RunRow,
                 occurrence: str, view: ReminderView,
                 rows: list[tuple[NotifyTarget, tuple[str, str, dict[str, Any]]]],
                 now: datetime) -> tuple[int, datetime | None]:
        """One transaction: every target's outbox row, deduplicated per run and target."""
        queued = 0
        with ctx.begin() as conn:
            late_done = done_at(conn, campaign.name, occurrence)
            if late_done is not None:  # marked done while we were checking the link
                return 0, late_done
            if view.link_broken and not has_event(conn, "link_broken", run.id):
                event(conn, "link_broken", campaign.name, now, run_id=run.id,
                      url=view.link, detail=f"{occurrence}: {view.link_status}")
            for target, (channel, address, payload) in rows:
                row_id = outbox_store.enqueue(
                    conn, topic="reminder", channel=channel, target=address,
                    payload=payload, now=now,
                    dedupe_key=f"reminder:{run.id}:{target_key(target)}")
                queued += row_id is not None
        return queued, None

    @staticmethod
    def _result(campaign: PostReminderCampaign, run: RunRow, occurrence: str, lead_name: str,
                view: ReminderView, targets: int, queued: int, note: str | None) -> RunResult:
        stats = {"post_id": occurrence, "lead": lead_name, "targets": targets,
                 "queued": queued, "link_broken": view.link_broken, "held": note is not None}
        detail = f"reminder {lead_name} before {occurrence} queued for {targets} target(s)"
        if view.link_broken:
            detail += f"; LINK BROKEN ({view.link_status})"
        if note:
            detail += f"; {note}"
        log.info("reminder queued", extra={"action": "reminder", "job": campaign.name,
                                           "run_id": run.id, **stats})
        return RunResult("done", detail, stats)

    def _view(self, campaign: PostReminderCampaign, post: Post, occurrence: str,
              lead: timedelta, post_at: datetime, link_status: LinkStatus | None,
              note: str | None, now: datetime) -> ReminderView:
        tz = ZoneInfo(campaign.timezone)
        local = post_at.astimezone(tz)
        networks = []
        warnings = []
        for network in post.networks:
            link = utm_link(post.link, network, campaign.utm, campaign.name) if post.link else ""
            variables = {"link": link, "network": network, "campaign": campaign.name,
                         "post_at": timestamp_text(local), "notes": post.notes or "",
                         "image": post.image or ""}
            raw = copy_for(post.copy, network)
            try:
                copy = render_copy(raw, variables)
            except TemplateError as exc:  # send the raw copy rather than no reminder at all
                copy = raw
                warnings.append(f"{network}: {exc}")
            networks.append({"network": network, "label": network_label(network),
                             "text": copy, "link": link})
        remaining = post_at - now
        due = due_text(lead) if remaining > timedelta(minutes=-1) else (
            f"was due {int(-remaining.total_seconds() // 60)} min ago")
        return ReminderView(
            campaign=campaign.name, post_id=occurrence, post_at_local=timestamp_text(local),
            lead_text=lead_text(lead), due_text=due, networks=networks, link=post.link,
            link_status=link_status.detail if link_status else None,
            link_broken=bool(link_status and not link_status.ok), image=post.image,
            notes=post.notes, held_note=note,
            done_hint=f"Posted it? Run: martech posted {campaign.name} --post {occurrence}",
            extra={"warnings": warnings},
        )

    @staticmethod
    def _payload(target: NotifyTarget, campaign: PostReminderCampaign, view: ReminderView,
                 post_at: datetime, subject: str, text: str, html: str, run_id: int
                 ) -> tuple[str, str, dict[str, Any]]:
        if target.email:
            return "email", target.email, {"subject": subject, "text": text, "html": html,
                                           "from": campaign.from_, "campaign": campaign.name,
                                           "run_id": run_id}
        assert target.webhook is not None
        if target.format == "slack":
            return "webhook", target.webhook, {"text": slack_text(view), "_format": "slack"}
        return "webhook", target.webhook, {**json_body(view, post_at), "_format": "json"}


def register(registry: Registry) -> None:
    registry.add_kind(PostReminderKind())
    registry.cli.append(register_cli)
    registry.http_routes.append(ical.add_routes)
