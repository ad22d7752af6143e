"""``martech validate`` for newsletters: templates, audience, context and addresses.

Each problem names the file and line a marketer has to open. The templates are rendered once
against the first audience row plus the context, so a missing variable is caught here rather
than discovered as a blank in 100k inboxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.newsletter.audiences import AudienceError, AudienceStats, iter_audience
from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.prepare import ContextFileError, load_context, utm_params
from scheduler.config.loader import LoadedConfig
from scheduler.delivery.message import AddressError, parse_mailbox
from scheduler.delivery.render import CampaignTemplates
from scheduler.errors import HeaderInjectionError, Problem, TemplateError
from scheduler.settings import Settings


def first_row(campaign: NewsletterCampaign, config: LoadedConfig) -> dict[str, Any] | None:
    """The first valid audience row in the segment (reads no further than needed)."""
    rows = iter_audience(campaign.audience, campaign.segment, config.config_dir, AudienceStats())
    for email, variables in rows:
        return {**variables, "email": email}
    return None


def validate_newsletter(campaign: NewsletterCampaign, config: LoadedConfig,
                        settings: Settings) -> list[Problem]:
    problems: list[Problem] = []

    def add(key: str, message: str) -> None:
        problems.append(config.campaign_problem(campaign.name, (key,), message))

    for key, value in (("from", campaign.from_), ("reply_to", campaign.reply_to)):
        if value is None:
            continue
        try:
            parse_mailbox(value)
        except (AddressError, HeaderInjectionError) as exc:
            add(key, str(exc))

    templates_dir = Path(settings.templates_dir)
    html_path = templates_dir / f"{campaign.template}.html"
    templates: CampaignTemplates | None = None
    if not html_path.is_file():
        add("template", f"template not found: {html_path} (expected {campaign.template}.html, "
                        f"and optionally {campaign.template}.txt)")
    else:
        try:
            templates = CampaignTemplates(templates_dir, campaign.template, campaign.subject,
                                          utm=utm_params(campaign))
        except TemplateError as exc:
            problems.append(_template_problem(exc, templates_dir, config, campaign.name))

    context: dict[str, Any] | None = None
    try:
        context = load_context(campaign, config)
    except ContextFileError as exc:
        problems.append(Problem(exc.path, exc.line, "context_file", exc.message))

    row: dict[str, Any] | None = None
    audience_ok = True
    try:
        row = first_row(campaign, config)
    except AudienceError as exc:
        audience_ok = False
        problems.append(Problem(exc.source, exc.line, "audience", exc.message))

    if templates is not None and context is not None and audience_ok:
        variables = {**context, **(row or {}), "unsubscribe_url": "https://example.invalid/u",
                     "campaign": campaign.name}
        variables.setdefault("email", "someone@example.com")
        try:
            templates.check(variables)
        except TemplateError as exc:
            problems.append(_template_problem(exc, templates_dir, config, campaign.name))
    return problems


def _template_problem(exc: TemplateError, templates_dir: Path, config: LoadedConfig,
                      name: str) -> Problem:
    if exc.template == "subject":
        return config.campaign_problem(name, ("subject",), exc.message)
    return Problem(str(templates_dir / exc.template), exc.line, "template", exc.message)


def newsletter_warnings(config: LoadedConfig, settings: Settings) -> list[str]:
    """What runs but costs deliverability: one-click unsubscribe needs an https URL."""
    base = settings.public_base_url
    newsletters = [c for c in config.campaigns.values() if isinstance(c, NewsletterCampaign)]
    if not newsletters or base is None or base.lower().startswith("https://"):
        return []
    return [f"MARTECH_PUBLIC_BASE_URL is {base}: without https, messages carry no one-click "
            "unsubscribe (List-Unsubscribe-Post), which Gmail and Yahoo require of bulk "
            "senders; fine for local use only"]
