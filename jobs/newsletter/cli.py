"""``martech preview``, ``martech send-test`` and ``martech send --now`` for newsletters."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from jobs.newsletter.audiences import AudienceStats, iter_audience, normalise
from jobs.newsletter.claims import cli_settings
from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.links import audience_links
from jobs.newsletter.prepare import prepare
from jobs.newsletter.send_cli import run_send
from scheduler.cli import State, console, friendly_errors
from scheduler.clock import SystemClock
from scheduler.config.loader import load_config
from scheduler.delivery.factory import make_transport
from scheduler.delivery.linkcheck import LinkCache, LinkChecker, describe_broken
from scheduler.delivery.message import valid_address
from scheduler.errors import MartechError, UnknownCampaign
from scheduler.store import pauses


def _campaign(state: State, name: str) -> tuple[Any, Any]:
    config = load_config(state.settings.config_dir, state.registry.campaign_types)
    campaign = config.campaigns.get(name)
    if campaign is None:
        raise UnknownCampaign(name)
    if not isinstance(campaign, NewsletterCampaign):
        raise MartechError(f"{name!r} is a {campaign.kind} campaign, not a newsletter")
    return config, campaign


def _row_for(campaign: Any, config: Any, recipient: str | None) -> tuple[str, dict[str, Any]]:
    wanted = normalise(recipient) if recipient else None
    for email, variables in iter_audience(campaign.audience, campaign.segment,
                                          config.config_dir, AudienceStats()):
        if wanted is None or email == wanted:
            return email, variables
    if wanted is None:
        raise MartechError(f"the audience of {campaign.name!r} has no valid recipient")
    raise MartechError(f"{recipient} is not in the audience (or segment) of {campaign.name!r}")


def _message(state: Any, config: Any, campaign: Any, email: str, variables: dict[str, Any],
             *, to: str | None = None, subject_prefix: str = "") -> Any:
    prepared = prepare(campaign, config, state.settings, run_id=None)
    url, links = prepared.unsubscribe_links(None)  # no delivery: the link unsubscribes no one
    values = prepared.variables(email, variables, url)
    rendered = prepared.templates.check(values)
    builder = prepared.builder
    builder.set_date(SystemClock().now())
    message = builder.build(
        to=to or email, subject=subject_prefix + rendered.subject, text=rendered.text,
        html=rendered.html, message_id=f"test.{uuid.uuid4().hex}@{builder.domain}",
        list_unsubscribe=links)
    return rendered, message


@click.command()
@click.argument("campaign")
@click.option("--recipient", help="Render for this audience member (default: the first).")
@click.option("--check-links", "with_links", is_flag=True,
              help="Also check every distinct link the run would send (exit 1 if broken).")
@click.pass_obj
@friendly_errors
def preview(state: State, campaign: str, recipient: str | None, with_links: bool) -> None:
    """Render CAMPAIGN for one recipient into var/previews/ (HTML, text, headers)."""
    config, camp = _campaign(state, campaign)
    _preview(state, config, camp, campaign, recipient)
    if with_links:
        sys.exit(_print_links(state, config, camp))


def _print_links(state: State, config: Any, camp: NewsletterCampaign) -> int:
    """The links a run would check, each with its status; 1 when any is broken."""
    collected = audience_links(camp, config, state.settings)
    checker = LinkChecker(LinkCache(SystemClock()), timeout_s=state.settings.http_timeout_s)
    results = asyncio.run(checker.check(collected.urls))
    table = Table("link", "status", title=f"Links of {camp.name} ({len(results)} distinct, "
                  f"over {collected.rendered} recipient(s))", title_justify="left")
    for url, status in results.items():
        table.add_row(escape(url), "ok " + status.detail if status.ok
                      else f"BROKEN {status.detail}")
    console.print(table)
    if collected.beyond_limit:
        console.print(f"{collected.beyond_limit} more distinct link(s) not checked "
                      "(per-recipient URLs past the limit)", markup=False)
    broken = {u: s for u, s in results.items() if not s.ok}
    if broken:
        console.print(describe_broken(broken), markup=False)
        return 1
    return 0


def _preview(state: State, config: Any, camp: NewsletterCampaign, campaign: str,
             recipient: str | None) -> None:
    email, variables = _row_for(camp, config, recipient)
    rendered, message = _message(state, config, camp, email, variables)
    out = Path(state.settings.var_dir) / "previews" / campaign
    out.mkdir(parents=True, exist_ok=True)
    stem = email.replace("@", "_at_")
    head = message.data.split(b"\r\n\r\n", 1)[0].decode("ascii").replace("\r\n", "\n")
    paths = {
        "html": (out / f"{stem}.html", rendered.html),
        "text": (out / f"{stem}.txt", rendered.text),
        "headers": (out / f"{stem}.headers.txt", head + "\n"),
    }
    for _kind, (path, content) in paths.items():
        path.write_text(content, encoding="utf-8")
    (out / f"{stem}.eml").write_bytes(message.data)
    console.print(f"preview of {campaign} for {email}:", markup=False)
    for kind, (path, _c) in paths.items():
        console.print(f"  {kind:8} {path}", markup=False)
    console.print(f"  {'message':8} {out / f'{stem}.eml'}", markup=False)


@click.command("resume-send")
@click.argument("campaign")
@click.pass_obj
@friendly_errors
def resume_send(state: State, campaign: str) -> None:
    """Clear the sender's own pauses of CAMPAIGN (error_budget, smtp_unreachable,
    broken_links: the links are checked again before sending goes on;
    smtp_auth_failed: the next send logs in again with the current credentials)."""
    _campaign(state, campaign)
    cleared = []
    with state.db().begin() as conn:
        for reason in (pauses.ERROR_BUDGET, pauses.SMTP_UNREACHABLE, pauses.BROKEN_LINKS,
                       pauses.SMTP_AUTH_FAILED):
            if pauses.remove(conn, campaign, reason, SystemClock().now()):
                cleared.append(reason)
        others = [p.reason for p in pauses.reasons(conn, campaign)]
    msg = (f"{campaign}: cleared {', '.join(cleared)}" if cleared else
           f"{campaign}: no error_budget, smtp_unreachable, broken_links or smtp_auth_failed "
           "pause")
    if others:
        msg += f"; still paused by {', '.join(others)}"
    console.print(msg, markup=False)


@click.command("send-test")
@click.argument("campaign")
@click.option("--to", "to", required=True, help="Where the test goes (e.g. yourself).")
@click.option("--recipient", help="Render as this audience member (default: the first).")
@click.pass_obj
@friendly_errors
def send_test(state: State, campaign: str, to: str, recipient: str | None) -> None:
    """Send one test of CAMPAIGN to --to, rendered for an audience member."""
    if not valid_address(to.strip()):
        raise MartechError(f"--to {to!r} is not an e-mail address")
    config, camp = _campaign(state, campaign)
    email, variables = _row_for(camp, config, recipient)
    _rendered, message = _message(state, config, camp, email, variables, to=to.strip(),
                                  subject_prefix="[TEST] ")

    async def _go() -> Any:
        transport = make_transport(cli_settings(state.settings))
        try:
            return await transport.send(message)
        finally:
            await transport.close()

    outcome = asyncio.run(_go())
    if not outcome.ok:
        raise MartechError(f"test not sent: {outcome.error}")
    console.print(f"test of {campaign} sent to {to} via {state.settings.transport} "
                  f"(rendered as {email})", markup=False)


@click.command()
@click.argument("campaign")
@click.option("--now", is_flag=True, help="Send immediately (required).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_obj
@friendly_errors
def send(state: State, campaign: str, now: bool, quiet: bool) -> None:
    """Send CAMPAIGN now, with progress; resumes an interrupted manual send.

    `martech pause CAMPAIGN` stops it within one batch; `martech resume` continues it.
    """
    if not now:
        raise click.UsageError("pass --now to send immediately; scheduled sends happen "
                               "in `martech run`")
    config = state.config()
    _config, camp = _campaign(state, campaign)
    sys.exit(asyncio.run(run_send(state, config, camp, quiet=quiet, console=console,
                                  signals=(signal.SIGINT, signal.SIGTERM),
                                  clock_s=time.monotonic)))


def register(group: click.Group) -> None:
    for command in (preview, resume_send, send_test, send):
        group.add_command(command)
