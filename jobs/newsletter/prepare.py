"""What a newsletter run needs before its first message: templates, context, signer, builder.

Everything here is done once per run; :func:`compose` is the per-recipient path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.ledger import DeliveryRow
from jobs.newsletter.tracking import LinkTracker
from scheduler.config.loader import LoadedConfig
from scheduler.delivery.base import OutgoingMessage
from scheduler.delivery.dkim import signer_from_settings
from scheduler.delivery.message import Envelope, MessageBuilder, check_header, parse_mailbox
from scheduler.delivery.render import CampaignTemplates, Rendered
from scheduler.delivery.tokens import Signer, scope_unsubscribe_token, unsubscribe_token
from scheduler.delivery.verp import Verp
from scheduler.errors import MartechError
from scheduler.keys import signer_for
from scheduler.settings import Settings


class ContextFileError(MartechError):
    """The campaign's context_file is missing or not a YAML mapping."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}{f':{line}' if line else ''}: {message}")


def load_context(campaign: NewsletterCampaign, config: LoadedConfig) -> dict[str, Any]:
    """Inline ``context`` over the ``context_file`` (the inline values win)."""
    context: dict[str, Any] = {}
    if campaign.context_file:
        path = config.path(campaign.context_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ContextFileError(str(path), f"cannot read context file: {exc.strerror}") \
                from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ContextFileError(str(path), f"invalid YAML: {exc}".splitlines()[0],
                                   mark.line + 1 if mark else None) from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ContextFileError(str(path), "expected a mapping of names to values", 1)
        context.update(data)
    context.update(campaign.context)
    return context


def utm_params(campaign: NewsletterCampaign) -> dict[str, str]:
    if campaign.utm is None:
        return {}
    utm = campaign.utm
    values = {"utm_source": utm.source, "utm_medium": utm.medium,
              "utm_campaign": utm.campaign or campaign.name, "utm_content": utm.content,
              "utm_term": utm.term}
    return {k: v for k, v in values.items() if v}


@dataclass
class Prepared:
    campaign: NewsletterCampaign
    templates: CampaignTemplates
    context: dict[str, Any]
    signer: Signer
    base_url: str | None
    mailto: str
    builder: MessageBuilder
    tracker: LinkTracker | None = None  # set only with a public base URL and tracking on
    verp: Verp | None = None  # set with MARTECH_BOUNCE_ADDRESS: per-delivery Return-Path
    base_variables: dict[str, Any] = field(default_factory=dict)  # globals + context

    def __post_init__(self) -> None:
        self.base_variables = {**self.templates.globals, **self.context,
                               "campaign": self.campaign.name}
        self.templates.specialise({**self.context, "campaign": self.campaign.name})

    def unsubscribe_links(self, delivery_id: int | None) -> tuple[str, list[str]]:
        """``(url for the template, List-Unsubscribe entries)``; the token names the delivery
        (no address), or for a test message (no delivery) unsubscribes no one."""
        token = (unsubscribe_token(self.signer, delivery_id) if delivery_id is not None
                 else scope_unsubscribe_token(self.signer, self.campaign.name))
        mailto = f"mailto:{self.mailto}?subject={quote('unsubscribe ' + token)}"
        if self.base_url:
            https = f"{self.base_url}/unsubscribe/{token}"
            return https, [https, mailto]
        return mailto, [mailto]

    def variables(self, email: str, row: dict[str, Any] | None, unsubscribe_url: str
                  ) -> dict[str, Any]:
        out = {**self.templates.globals, **self.context}
        out.update(row or {})
        out.update(email=email, unsubscribe_url=unsubscribe_url, campaign=self.campaign.name)
        return out


def prepare(campaign: NewsletterCampaign, config: LoadedConfig, settings: Settings, *,
            run_id: int | None) -> Prepared:
    """Compile templates, load the context, build the per-run header block.

    :raises TemplateError, ContextFileError, AddressError, HeaderInjectionError, DkimError,
        VerpError, InsecureSecretKey: the campaign cannot be sent.
    """
    base_url = settings.public_base_url.rstrip("/") if settings.public_base_url else None
    templates = CampaignTemplates(
        Path(settings.templates_dir), campaign.template, campaign.subject,
        utm=utm_params(campaign), skip_utm_prefixes=(base_url or "",),
        budget_ms=settings.render_budget_ms)
    if templates.subject_const is not None:  # the same for everyone: refuse it once, here
        check_header("Subject", templates.subject_const)
    context = load_context(campaign, config)
    _name, sender = parse_mailbox(campaign.from_)
    domain = sender.rsplit("@", 1)[1]
    envelope = Envelope(from_header=campaign.from_, reply_to=campaign.reply_to,
                        campaign=campaign.name, run_id=run_id,
                        extra_headers=list_headers(campaign.name, domain, settings),
                        one_click=one_click(base_url))
    dkim = signer_from_settings(settings)
    builder = MessageBuilder(envelope, boundary_seed=f"{campaign.name}{run_id or 0}",
                             sign=dkim.sign if dkim is not None else None)
    signer = signer_for(settings)
    track = campaign.track
    tracker = (LinkTracker(signer, base_url, clicks=track.clicks, opens=track.opens)
               if base_url and (track.clicks or track.opens) else None)
    verp = Verp(signer, settings.bounce_address) if settings.bounce_address else None
    return Prepared(campaign, templates, context, signer, base_url, f"unsubscribe@{domain}",
                    builder, tracker, verp)


def one_click(base_url: str | None) -> bool:
    """RFC 8058 one-click only behind https (Yahoo and Gmail ignore it otherwise; plain http is
    for local use and ``validate`` warns about it)."""
    return base_url is not None and base_url.lower().startswith("https://")


def list_headers(campaign: str, domain: str, settings: Settings) -> dict[str, str]:
    """List-Id (RFC 2919) names the list for filters and providers' unsubscribe buttons;
    Feedback-ID (Gmail's feedback loop) groups complaint rates by campaign."""
    return {"List-Id": f"{campaign} <{campaign}.{domain}>",
            "Feedback-ID": f"{campaign}:newsletter:{settings.feedback_id_sender}"}


def render_row(prepared: Prepared, row: DeliveryRow, unsubscribe_url: str) -> Rendered:
    """One recipient's subject, HTML and text: UTM-tagged, not yet tracked."""
    templates = prepared.templates
    values = row.variables or {}
    if templates.split is not None and not templates.shared_names.intersection(values):
        # Fast path: the templates were rendered once for the run; substitute this row.
        per_recipient = {**values, "email": row.recipient, "unsubscribe_url": unsubscribe_url}
        return templates.render_split(per_recipient) or templates.render(
            {**prepared.base_variables, **per_recipient}, has_globals=True)
    variables = prepared.base_variables.copy()
    variables.update(values)
    variables.update(email=row.recipient, unsubscribe_url=unsubscribe_url)
    return templates.render(variables, has_globals=True)


def compose(prepared: Prepared, row: DeliveryRow) -> OutgoingMessage:
    """The per-recipient path: render, then join the precomputed header block."""
    url, links = prepared.unsubscribe_links(row.id)
    rendered = render_row(prepared, row, url)
    html = rendered.html
    if prepared.tracker is not None:
        # After rendering, so both render paths get the very same links; the text part keeps
        # its plain (UTM-tagged) links.
        html = prepared.tracker.apply(html, row.id, row.recipient)
    message_id = row.message_id or prepared.builder.message_id(row.id)
    bounce_to = prepared.verp.address(row.id) if prepared.verp is not None else None
    return prepared.builder.build(to=row.recipient, subject=rendered.subject, text=rendered.text,
                                  html=html, message_id=message_id, list_unsubscribe=links,
                                  delivery_id=row.id, envelope_from=bounce_to)
