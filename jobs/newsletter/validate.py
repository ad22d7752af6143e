"""``martech validate`` for newsletters: templates, audience, context and addresses.

Each problem names the file and line a marketer has to open. The templates are rendered once
against the first audience row plus the context, under the send's render budget, so a missing
variable or a runaway loop is caught here rather than discovered as a blank in 100k inboxes;
and the message is then built as the send builds it, so a header that the send would refuse
(a line break in the subject, a line too long, unencoded text) is caught too.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from jobs.newsletter.audiences import AudienceError, AudienceStats, iter_audience
from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.prepare import ContextFileError, load_context, utm_params
from jobs.newsletter.tracking import LinkTracker
from scheduler.clock import SystemClock
from scheduler.config.loader import LoadedConfig
from scheduler.delivery.header_check import header_problems
from scheduler.delivery.message import AddressError, Envelope, MessageBuilder, parse_mailbox
from scheduler.delivery.render import CampaignTemplates, Rendered
from scheduler.delivery.tokens import Signer, unsubscribe_token
from scheduler.errors import HeaderInjectionError, MartechError, Problem, TemplateError
from scheduler.settings import Settings

SAMPLE_DELIVERY_ID = 10**9  # a token of realistic length, signed with a throwaway key


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
                                          utm=utm_params(campaign),
                                          budget_ms=settings.render_budget_ms)
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
            rendered = templates.check(variables)
        except TemplateError as exc:
            problems.append(_template_problem(exc, templates_dir, config, campaign.name))
        else:
            problems += _header_problems(campaign, config, settings, rendered,
                                         str(variables["email"]))
    return problems


def _header_problems(campaign: NewsletterCampaign, config: LoadedConfig, settings: Settings,
                     rendered: Rendered, email: str) -> list[Problem]:
    """Build the sample message as the send would, then check its header lines."""
    base_url = settings.public_base_url.rstrip("/") if settings.public_base_url else None
    token = unsubscribe_token(Signer(secrets.token_bytes(32)), SAMPLE_DELIVERY_ID)
    links = [f"mailto:unsubscribe@example.invalid?subject=unsubscribe%20{token}"]
    if base_url:
        links.insert(0, f"{base_url}/unsubscribe/{token}")
    try:
        builder = MessageBuilder(Envelope(
            from_header=campaign.from_, reply_to=campaign.reply_to, campaign=campaign.name,
            run_id=SAMPLE_DELIVERY_ID, one_click=base_url is not None))
        builder.set_date(SystemClock().now())
        message = builder.build(to=email, subject=rendered.subject, text=rendered.text,
                                html=rendered.html, list_unsubscribe=links,
                                message_id=builder.message_id(SAMPLE_DELIVERY_ID))
    except HeaderInjectionError as exc:
        key = "subject" if exc.header == "Subject" else "from"
        return [config.campaign_problem(campaign.name, (key,), f"the rendered {exc.header} "
                                        "contains a line break (CR/LF): the send refuses it")]
    except AddressError:
        return []  # from / reply_to: reported above with their own field
    except MartechError as exc:
        return [config.campaign_problem(campaign.name, ("subject",), str(exc))]
    fields = {"from": "from", "reply-to": "reply_to"}
    return [config.campaign_problem(campaign.name, (fields.get(name.lower(), "subject"),),
                                    problem) for name, problem in header_problems(message.data)]


def _template_problem(exc: TemplateError, templates_dir: Path, config: LoadedConfig,
                      name: str) -> Problem:
    if exc.template == "subject":
        return config.campaign_problem(name, ("subject",), exc.message)
    return Problem(str(templates_dir / exc.template), exc.line, "template", exc.message)


# SpamAssassin's HTML_IMAGE_ONLY_04…_32 score an HTML part with an image (our open pixel) whose
# source — tags and URLs included (HTML.pm counts the raw length) — is at most this long: up to
# 2.8 points in its local tests (20_html_tests.cf).
IMAGE_ONLY_HTML_CHARS = 3200


def newsletter_warnings(config: LoadedConfig, settings: Settings) -> list[str]:
    """What runs but costs deliverability: one-click unsubscribe needs an https URL; a short
    HTML part with the open pixel looks like an image-only spam to SpamAssassin."""
    base = settings.public_base_url
    newsletters = [c for c in config.campaigns.values() if isinstance(c, NewsletterCampaign)]
    out: list[str] = []
    if newsletters and base is not None and not base.lower().startswith("https://"):
        out.append(f"MARTECH_PUBLIC_BASE_URL is {base}: without https, messages carry no "
                   "one-click unsubscribe (List-Unsubscribe-Post), which Gmail and Yahoo "
                   "require of bulk senders; fine for local use only")
    if base is None:  # no tracking without a public base URL
        return out
    for campaign in newsletters:
        if not campaign.track.opens:
            continue
        html = _sample_html(campaign, config, settings, base)
        if html is not None and len(html) <= IMAGE_ONLY_HTML_CHARS:
            out.append(f"campaign {campaign.name}: the HTML part is {len(html)} characters "
                       "with the open-tracking image; SpamAssassin scores that up to 2.8 "
                       f"points (HTML_IMAGE_ONLY_*) up to {IMAGE_ONLY_HTML_CHARS} — add text "
                       "or set track: {opens: false}")
    return out


def _sample_html(campaign: NewsletterCampaign, config: LoadedConfig, settings: Settings,
                 base_url: str) -> str | None:
    """The HTML part as sent to the first audience row (links and pixel included), or None
    when it cannot be rendered (validate reports that as a problem of its own)."""
    try:
        templates = CampaignTemplates(Path(settings.templates_dir), campaign.template,
                                      campaign.subject, utm=utm_params(campaign),
                                      budget_ms=settings.render_budget_ms)
        row = first_row(campaign, config) or {"email": "someone@example.com"}
        variables = {**load_context(campaign, config), **row, "campaign": campaign.name,
                     "unsubscribe_url": "https://example.invalid/u"}
        html = templates.check(variables).html
    except MartechError:
        return None
    # A throwaway key: only the links' length matters here.
    tracker = LinkTracker(Signer(secrets.token_bytes(32)), base_url.rstrip("/"),
                          clicks=campaign.track.clicks, opens=True)
    return tracker.apply(html, 1)
