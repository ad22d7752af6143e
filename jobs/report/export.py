"""Per-recipient export (CSV): who was sent, delivered, opened, clicked, unsubscribed,
bounced. The only output that names addresses: reports, logs and JSON never do."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from scheduler.store.tables import deliveries, runs, tracking_events

COLUMNS = ("campaign", "run_id", "scheduled_at", "recipient", "status", "sent_at",
           "opened_human", "opened_machine", "clicked_human", "clicked_machine",
           "first_human_click_url", "unsubscribed", "bounced")


def recipients_csv(conn: sa.Connection, names: Sequence[str], since: datetime,
                   until: datetime) -> str:
    """One row per delivery of the campaigns' runs scheduled in ``[since, until)``.

    Opens and clicks come from the raw events still kept (``retention_raw_age_s``).
    """
    r, d, e = runs.c, deliveries.c, tracking_events.c
    run_ids = sa.select(r.id).where(r.campaign.in_(names), r.scheduled_at >= since,
                                    r.scheduled_at < until)
    flags: dict[int, dict[str, object]] = {}
    stmt = (sa.select(e.delivery_id, e.kind, e.traffic, e.url, e.at)
            .where(e.run_id.in_(run_ids), e.delivery_id.is_not(None),
                   e.kind.in_(("opened", "clicked", "bounced")))
            .order_by(e.at, e.id))
    for delivery_id, kind, traffic, url, _at in conn.execute(stmt):
        row = flags.setdefault(delivery_id, {})
        cls = "machine" if traffic == "machine" else "human" if traffic != "suspect" else None
        if kind in ("opened", "clicked") and cls:
            row[f"{kind}_{cls}"] = 1
            if kind == "clicked" and cls == "human":
                row.setdefault("first_human_click_url", url or "")
        elif kind == "bounced":
            row["bounced"] = 1
    unsubscribed = {(c, (rcpt or "").lower()) for c, rcpt in conn.execute(
        sa.select(e.campaign, e.recipient).where(e.kind == "unsubscribed",
                                                 e.campaign.in_(names), e.at >= since))}
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    rows = conn.execute(
        sa.select(r.campaign, d.run_id, r.scheduled_at, d.id, d.recipient, d.status, d.sent_at)
        .select_from(deliveries.join(runs, d.run_id == r.id))
        .where(d.run_id.in_(run_ids)).order_by(r.campaign, r.scheduled_at, d.id))
    for campaign, run_id, scheduled_at, delivery_id, recipient, status, sent_at in rows:
        f = flags.get(delivery_id, {})
        writer.writerow([
            campaign, run_id, scheduled_at.isoformat(), recipient, status,
            sent_at.isoformat() if sent_at else "",
            f.get("opened_human", 0), f.get("opened_machine", 0), f.get("clicked_human", 0),
            f.get("clicked_machine", 0), f.get("first_human_click_url", ""),
            int((campaign, recipient.lower()) in unsubscribed),
            int(status == "bounced" or bool(f.get("bounced")))])
    return out.getvalue()
