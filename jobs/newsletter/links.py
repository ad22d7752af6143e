"""Every distinct link of a newsletter, checked once before the run's first message.

The links are those of the messages as rendered for the run's own recipients — after UTM
tagging, before click tracking (a tracked link points at us, not at the page) — gathered over
every pending row, so a link that only some segment's rows carry is checked too. Our own
links (unsubscribe, tracking: under ``MARTECH_PUBLIC_BASE_URL``) are left out. A broken link
pauses the campaign with reason ``broken_links`` naming it (``on_broken_links: pause``) or is
only logged and recorded (``warn``); both leave a ``link_broken`` tracking event per link and
the facts in ``runs.stats["links"]`` for the report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from jobs.newsletter.audiences import AudienceStats, iter_audience
from jobs.newsletter.config import NewsletterCampaign
from jobs.newsletter.ledger import DeliveryRow
from jobs.newsletter.prepare import Prepared, prepare, render_row
from scheduler.config.loader import LoadedConfig
from scheduler.context import ServiceContext
from scheduler.delivery.linkcheck import (
    LinkChecker,
    LinkStatus,
    cache_for,
    describe_broken,
    links_in,
)
from scheduler.errors import MartechError
from scheduler.settings import Settings
from scheduler.store import pauses
from scheduler.store.tables import deliveries, runs, tracking_events

log = logging.getLogger("martech.newsletter")

MAX_LINKS = 1000  # distinct links checked per run; per-recipient URLs beyond are counted
READ_CHUNK = 2000


@dataclass
class Collected:
    urls: list[str] = field(default_factory=list)
    beyond_limit: int = 0  # distinct links past MAX_LINKS, not checked
    rendered: int = 0
    errors: int = 0  # rows whose render failed (they fail at send time, with the reason)


def collect(prepared: Prepared, rows: Iterable[DeliveryRow], limit: int = MAX_LINKS
            ) -> Collected:
    """The distinct links of the messages ``rows`` will receive, in order of appearance."""
    own = f"{prepared.base_url}/" if prepared.base_url else None
    # Our own unsubscribe link is never checked: a placeholder spares an HMAC per row.
    unsubscribe = f"{own}unsubscribe/-" if own else "mailto:unsubscribe@invalid"
    seen: dict[str, None] = {}
    extra: set[str] = set()
    out = Collected()
    for row in rows:
        try:
            rendered = render_row(prepared, row, unsubscribe)
        except MartechError:
            out.errors += 1
            continue
        out.rendered += 1
        for link in links_in(rendered.html, rendered.text):
            if (own and link.startswith(own)) or link in seen:
                continue
            if len(seen) < limit:
                seen[link] = None
            elif len(extra) < 100_000:
                extra.add(link)
    out.urls = list(seen)
    out.beyond_limit = len(extra)
    return out


def pending_rows(ctx: ServiceContext, run_id: int) -> Iterator[DeliveryRow]:
    """The run's pending rows, in id order, read in chunks."""
    last = 0
    while True:
        with ctx.begin() as conn:
            chunk = conn.execute(
                sa.select(deliveries.c.id, deliveries.c.recipient, deliveries.c.attempts,
                          deliveries.c.message_id, deliveries.c.variables)
                .where(deliveries.c.run_id == run_id, deliveries.c.status == "pending",
                       deliveries.c.id > last)
                .order_by(deliveries.c.id).limit(READ_CHUNK)).all()
        if not chunk:
            return
        for r in chunk:
            yield DeliveryRow(r.id, r.recipient, r.attempts, r.message_id, r.variables)
        last = chunk[-1].id


def audience_rows(prepared: Prepared, config_dir: Any) -> Iterator[DeliveryRow]:
    """The audience as rows (``validate --links``, ``preview --check-links``: no run yet)."""
    campaign = prepared.campaign
    rows = iter_audience(campaign.audience, campaign.segment, config_dir, AudienceStats())
    for index, (email, variables) in enumerate(rows, start=1):
        yield DeliveryRow(index, email, 0, None, variables)


def settled(prepared: Prepared, stats: dict[str, Any]) -> bool:
    """No check needed: disabled, or done for this run and nothing held it back."""
    campaign = prepared.campaign
    done = stats.get("links")
    if not campaign.check_links:
        return True
    return isinstance(done, dict) and (not done.get("broken")
                                       or campaign.on_broken_links == "warn")


def audience_links(campaign: NewsletterCampaign, config: LoadedConfig, settings: Settings
                   ) -> Collected:
    """What a run would check, from the audience as it is now (no run, no ledger)."""
    prepared = prepare(campaign, config, settings, run_id=None)
    return collect(prepared, audience_rows(prepared, config.config_dir))


async def check_links(ctx: ServiceContext, collected: Collected) -> dict[str, LinkStatus]:
    checker = LinkChecker(cache_for(ctx), timeout_s=ctx.settings.http_timeout_s)
    return await checker.check(collected.urls)


async def before_first_message(ctx: ServiceContext, prepared: Prepared, run_id: int,
                               stats: dict[str, Any]) -> bool:
    """Check the run's links; True when sending may go on (no broken link, or ``warn``).

    On ``pause`` with broken links the campaign gets the ``broken_links`` reason and False is
    returned: the sender's pause check takes it from there, and once the reason is cleared
    (``martech resume-send``) the links are checked again before anything is sent.
    """
    campaign = prepared.campaign
    collected = await ctx.in_thread(lambda: collect(prepared, pending_rows(ctx, run_id)))
    results = await check_links(ctx, collected)
    broken = {url: s for url, s in results.items() if not s.ok}
    now = ctx.clock.now()
    stats["links"] = {
        "checked": len(results), "broken": [{"url": u, "detail": s.detail}
                                            for u, s in broken.items()],
        "not_checked": collected.beyond_limit, "at": now.isoformat(),
        "policy": campaign.on_broken_links,
    }
    pause = bool(broken) and campaign.on_broken_links == "pause"
    extra = {"job": campaign.name, "run_id": run_id, "action": "link_check",
             "checked": len(results), "broken": len(broken)}

    def _record() -> None:
        with ctx.begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(stats=stats))
            _events(conn, campaign.name, run_id, broken, now)
            if pause:
                pauses.add(conn, campaign.name, pauses.BROKEN_LINKS, now,
                           detail=describe_broken(broken), by="sender")

    await ctx.in_thread(_record)
    if broken:
        log.warning("%s; %s", describe_broken(broken),
                    "campaign paused" if pause else "sending anyway (on_broken_links: warn)",
                    extra=extra)
    else:
        log.info("%d link(s) checked, none broken", len(results), extra=extra)
    return not pause


def _events(conn: sa.Connection, campaign: str, run_id: int, broken: dict[str, LinkStatus],
            now: Any) -> None:
    """One ``link_broken`` event per broken link and run (a re-check adds no duplicate)."""
    if not broken:
        return
    known = set(conn.execute(sa.select(tracking_events.c.url).where(
        tracking_events.c.run_id == run_id, tracking_events.c.kind == "link_broken")).scalars())
    rows = [{"at": now, "kind": "link_broken", "campaign": campaign, "run_id": run_id,
             "url": url, "detail": status.detail}
            for url, status in broken.items() if url not in known]
    if rows:
        conn.execute(sa.insert(tracking_events), rows)
