"""A run's audience becomes ledger rows before anything is sent (ARCHITECTURE.md, invariant 3).

Streamed in chunks (idempotent: re-running after a crash is safe), each row with its send time
when the campaign sends by recipient zone; then, in the last transaction, the suppressed and
the forgotten are taken out, rows already too late are skipped, and every row gets its
deterministic Message-ID. Only the run's owner materialises; helpers wait for ``materialised``
in ``runs.stats``.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from jobs.newsletter import ledger, zones
from jobs.newsletter.audiences import AudienceStats, iter_audience
from jobs.newsletter.prepare import Prepared
from scheduler.context import ServiceContext
from scheduler.privacy import exclude_forgotten
from scheduler.store import runs as run_store
from scheduler.store.tables import runs

log = logging.getLogger("martech.newsletter")

MATERIALISE_CHUNK = 2000


def stored_stats(ctx: ServiceContext, run_id: int) -> dict[str, Any]:
    with ctx.begin() as conn:
        stored = conn.execute(sa.select(runs.c.stats).where(runs.c.id == run_id)).scalar()
    return dict(stored or {})


def materialise(ctx: ServiceContext, prepared: Prepared, run_id: int,
                extra: dict[str, Any]) -> dict[str, Any]:
    """Stream the audience into the ledger; return the run's stats."""
    campaign = prepared.campaign
    with ctx.begin() as conn:
        run = run_store.get(conn, run_id)
    stats = (run.stats if run else None) or {}
    if stats.get("materialised"):
        return dict(stats)
    plan = zones.plan_for(campaign, run) if run else None
    due_at = plan.due_at if plan else None
    audience = AudienceStats()
    streamed = 0
    chunk: list[tuple[str, dict[str, Any]]] = []
    for item in iter_audience(campaign.audience, campaign.segment, ctx.config.config_dir,
                              audience):
        chunk.append(item)
        streamed += 1
        if len(chunk) >= MATERIALISE_CHUNK:
            with ctx.begin() as conn:
                ledger.materialise(conn, run_id, chunk, due_at)
            chunk = []
    prefix, suffix = prepared.builder.message_id("ID").split("ID", 1)
    with ctx.begin() as conn:
        ledger.materialise(conn, run_id, chunk, due_at)
        suppressed = ledger.exclude_suppressed(conn, run_id)
        suppressed += exclude_forgotten(conn, prepared.signer, run_id)
        late = 0
        if plan is not None and run is not None:
            late = ledger.skip_overdue(conn, run_id, zones.overdue_before(
                campaign, run, ctx.clock.now(), first=True))
        ledger.assign_message_ids(conn, run_id, prefix, suffix)
        total = sum(ledger.counts(conn, run_id).values())
        stats = {"materialised": True, "audience_rows": audience.rows,
                 "invalid": audience.invalid, "filtered": audience.filtered,
                 "duplicates": max(0, streamed - total), "suppressed": suppressed,
                 "total": total, "invalid_examples": audience.examples,
                 **({**plan.stats(), "late": late} if plan is not None else {})}
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(stats=stats))
    log.info("audience materialised", extra={**extra, "action": "materialise",
                                             **{k: v for k, v in stats.items()
                                                if isinstance(v, int)}})
    return stats


def skip_overdue_now(ctx: ServiceContext, campaign: Any, run_id: int) -> None:
    """On a (re)start of the send: rows whose zone's time is past its grace are skipped."""
    with ctx.begin() as conn:
        run = run_store.get(conn, run_id)
        if run is not None and zones.plan_for(campaign, run) is not None:
            ledger.skip_overdue(conn, run_id, zones.overdue_before(
                campaign, run, ctx.clock.now(), first=False))
