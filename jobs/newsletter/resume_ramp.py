"""Which resume ramp applies to a newsletter now, and the ``ramp`` event the report counts."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from jobs.newsletter.config import NewsletterCampaign
from scheduler.delivery.ramp import Ramp
from scheduler.store.pause_history import PauseSpan, last_pause
from scheduler.store.tables import tracking_events


def ramp_for(conn: sa.Connection, campaign: NewsletterCampaign, now: datetime
             ) -> tuple[Ramp, PauseSpan] | None:
    """The ramp after the campaign's last pause, if that pause was long and it is still on."""
    config = campaign.send.ramp
    if not config.enabled:
        return None
    span = last_pause(conn, campaign.name)
    if span is None or span.length < config.after:
        return None
    ramp = Ramp(span.end, config.over, config.start)
    return (ramp, span) if now < ramp.until else None


def record(conn: sa.Connection, campaign: str, run_id: int, ramp: Ramp, span: PauseSpan,
           now: datetime) -> bool:
    """One ``ramp`` event per pause (however many runs or restarts resume after it)."""
    detail = (f"after a pause of {span.length} (until {span.end.isoformat()}): "
              f"{ramp.describe()}")
    seen = conn.execute(sa.select(sa.literal(1)).where(
        tracking_events.c.kind == "ramp", tracking_events.c.campaign == campaign,
        tracking_events.c.detail == detail).limit(1)).first()
    if seen is not None:
        return False
    conn.execute(sa.insert(tracking_events).values(at=now, kind="ramp", campaign=campaign,
                                                   run_id=run_id, detail=detail))
    return True
