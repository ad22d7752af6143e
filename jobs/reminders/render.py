"""Rendering a reminder: UTM-tagged links, the post copy per network, the message bodies.

Copy and templates are written by marketers, so they run in Jinja2's sandbox; the HTML
template autoescapes, the plain-text copy does not (it is pasted into a social network).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from scheduler.config.campaigns import UtmConfig
from scheduler.delivery.render import make_environment
from scheduler.errors import TemplateError

TEMPLATE = "post-reminder"
NETWORK_NAMES = {"linkedin": "LinkedIn", "x": "X", "twitter": "X (Twitter)",
                 "facebook": "Facebook", "instagram": "Instagram", "mastodon": "Mastodon",
                 "threads": "Threads", "bluesky": "Bluesky", "tiktok": "TikTok",
                 "youtube": "YouTube"}

_copy_env = make_environment(None, html=False, keep_trailing_newline=False)


def network_label(network: str) -> str:
    return NETWORK_NAMES.get(network.lower(), network)


SAMPLE_COPY_VARIABLES = {"link": "https://example.invalid/", "network": "linkedin",
                         "campaign": "campaign", "post_at": "", "notes": "", "image": ""}


def copy_problem(text: str) -> str | None:
    """Why a copy template does not compile, or does not render (within its work budget)."""
    try:
        template = _copy_env.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        return f"copy template error on line {exc.lineno}: {exc.message}"
    try:
        template.render(**SAMPLE_COPY_VARIABLES)
    except TemplateError as exc:  # over its render budget
        return f"copy template error on line {exc.line}: {exc.message}"
    except jinja2.TemplateError:
        return None  # e.g. a variable only known when the post is due: checked then
    return None


def sample_view(campaign: str) -> ReminderView:
    """What ``martech validate`` renders the reminder templates with."""
    return ReminderView(
        campaign=campaign, post_id="sample", post_at_local="Mon 2026-01-05 10:00 UTC",
        lead_text="1h", due_text="in 1 hour",
        networks=[{"network": "linkedin", "label": "LinkedIn", "text": "Sample copy",
                   "link": "https://example.invalid/"}],
        link="https://example.invalid/", link_status=None, link_broken=False, image=None,
        notes=None, held_note=None, done_hint=f"martech posted {campaign} --post sample",
        extra={"warnings": []})


def utm_link(link: str, network: str, utm: UtmConfig | None, campaign: str) -> str:
    """``link`` with utm_* parameters: source is the network unless the campaign sets one."""
    params = {
        "utm_source": (utm.source if utm and utm.source else network.lower()),
        "utm_medium": (utm.medium if utm and utm.medium else "social"),
        "utm_campaign": (utm.campaign if utm and utm.campaign else campaign),
    }
    if utm and utm.content:
        params["utm_content"] = utm.content
    if utm and utm.term:
        params["utm_term"] = utm.term
    parts = urlsplit(link)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def copy_for(copy: str | dict[str, str], network: str) -> str:
    if isinstance(copy, str):
        return copy
    for key in (network, network.lower(), "default", "all"):
        if key in copy:
            return copy[key]
    return next(iter(copy.values()), "")


def render_copy(text: str, variables: dict[str, Any]) -> str:
    try:
        return _copy_env.from_string(text).render(**variables).strip()
    except jinja2.TemplateError as exc:
        raise TemplateError("copy", str(exc)) from exc


@dataclass
class ReminderView:
    """Everything the reminder templates show."""

    campaign: str
    post_id: str
    post_at_local: str
    lead_text: str
    due_text: str  # "in 1 hour", "now", "1 hour ago"
    networks: list[dict[str, str]]  # {network, label, text, link}
    link: str | None
    link_status: str | None  # None: not checked; "ok"; or why it is broken
    link_broken: bool
    image: str | None
    notes: str | None
    held_note: str | None
    done_hint: str
    extra: dict[str, Any] = field(default_factory=dict)

    def subject(self) -> str:
        labels = " + ".join(n["label"] for n in self.networks)
        prefix = "[LINK BROKEN] " if self.link_broken else ""
        held = "[held] " if self.held_note else ""
        return f"{prefix}{held}{labels} post {self.due_text}: {self.campaign} ({self.post_id})"

    def context(self) -> dict[str, Any]:
        return {**self.__dict__, "subject": self.subject()}


def template_env(templates_dir: Path) -> ImmutableSandboxedEnvironment:
    """One environment for the .txt and .html twins: autoescape by file extension."""
    return make_environment(
        templates_dir, html=jinja2.select_autoescape(["html"], default_for_string=False),
        keep_trailing_newline=False)


def render_email(view: ReminderView, templates_dir: Path) -> tuple[str, str, str]:
    """(subject, text, html) from templates/email/post-reminder.txt and .html."""
    env = template_env(templates_dir)
    try:
        text = env.get_template(f"{TEMPLATE}.txt").render(**view.context())
        html = env.get_template(f"{TEMPLATE}.html").render(**view.context())
    except jinja2.TemplateError as exc:
        raise TemplateError(TEMPLATE, str(exc)) from exc
    return view.subject(), text, html


def slack_text(view: ReminderView) -> str:
    """A compact Slack message (mrkdwn): what, when, the copy to paste, warnings first."""
    lines = [f"*{view.subject()}*"]
    if view.link_broken:
        lines.append(f":warning: The link is broken ({view.link_status}): {view.link}"
                     " — do not post until it is fixed.")
    if view.held_note:
        lines.append(f":pause_button: {view.held_note}")
    lines.append(f"Due {view.post_at_local}.")
    for net in view.networks:
        lines.append(f"*{net['label']}*:\n```{net['text']}```")
    if view.image:
        lines.append(f"Image: {view.image}")
    if view.notes:
        lines.append(f"Notes: {view.notes}")
    lines.append(view.done_hint)
    return "\n".join(lines)


def json_body(view: ReminderView, post_at: datetime) -> dict[str, Any]:
    """The generic JSON webhook body: machine-readable, same facts as the e-mail."""
    return {
        "event": "post_reminder", "campaign": view.campaign, "post_id": view.post_id,
        "post_at": post_at.isoformat(), "post_at_local": view.post_at_local,
        "lead": view.lead_text, "networks": view.networks, "link": view.link,
        "link_broken": view.link_broken, "link_status": view.link_status,
        "image": view.image, "notes": view.notes, "held": view.held_note is not None,
        "held_note": view.held_note, "text": slack_text(view),
    }


def timestamp_text(dt: datetime) -> str:
    return dt.strftime("%a %Y-%m-%d %H:%M %Z")
