"""Prometheus metrics: the guard's gauges here, sending/outbox/nodes in ``ledger_metrics``,
HTTP requests in ``http_metrics``; all served by the HTTP app's ``/metrics``.

A private registry, so tests and several services in one process never collide; the text
exposition comes from :func:`render`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from scheduler.ledger_metrics import (
    Collects,
    Families,
    FinishedRuns,
    page_families,
    sending_families,
    service_families,
)
from scheduler.store import pauses
from scheduler.store.tables import check_results, check_state

# Gauge values for check state: what a Grafana panel maps back to words.
STATE_VALUES = {"up": 1.0, "down": 0.0, "unknown": -1.0, "pending": -2.0}


class GuardMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.check_state = Gauge(
            "martech_check_state", "Check verdict: 1 up, 0 down, -1 unknown, -2 pending",
            ["check"], registry=self.registry)
        self.check_up = Gauge(
            "martech_check_up", "1 when the check's verdict is up, else 0",
            ["check"], registry=self.registry)
        self.check_latency = Gauge(
            "martech_check_latency_seconds", "Duration of the check's latest probe",
            ["check"], registry=self.registry)
        self.campaign_paused = Gauge(
            "martech_campaign_paused", "1 while the campaign has any pause reason",
            ["campaign"], registry=self.registry)
        self.campaign_pause_reasons = Gauge(
            "martech_campaign_pause_reasons", "Number of pause reasons per campaign",
            ["campaign"], registry=self.registry)

    def set_check(self, check: str, verdict: str, latency_s: float | None) -> None:
        self.check_state.labels(check).set(STATE_VALUES.get(verdict, -2.0))
        self.check_up.labels(check).set(1.0 if verdict == "up" else 0.0)
        if latency_s is not None:
            self.check_latency.labels(check).set(latency_s)

    def set_campaigns(self, campaigns: Iterable[str], reasons: Mapping[str, int]) -> None:
        for name in campaigns:
            count = reasons.get(name, 0)
            self.campaign_paused.labels(name).set(1.0 if count else 0.0)
            self.campaign_pause_reasons.labels(name).set(float(count))

    def refresh(self, conn: sa.Connection, checks: Iterable[str], campaigns: Iterable[str]
                ) -> None:
        """Read verdicts, latest latencies and pauses from the database (any node's view)."""
        states = {r.check_name: r.verdict for r in conn.execute(
            sa.select(check_state.c.check_name, check_state.c.verdict))}
        for name in checks:
            latency = conn.execute(
                sa.select(check_results.c.latency_ms).where(check_results.c.check_name == name)
                .order_by(check_results.c.at.desc()).limit(1)).scalar_one_or_none()
            self.set_check(name, states.get(name, "pending"),
                           latency / 1000.0 if latency is not None else None)
        reasons = {c: len(ps) for c, ps in pauses.all_reasons(conn).items()}
        self.set_campaigns(campaigns, reasons)

    def render(self) -> bytes:
        """The Prometheus text exposition format."""
        return bytes(generate_latest(self.registry))


def render_from_db(conn: sa.Connection, checks: Iterable[str], campaigns: Iterable[str], *,
                   now: datetime, finished: FinishedRuns | None = None,
                   extra: Iterable[Collects] = ()) -> bytes:
    """Every metric as of ``now`` (the caller's clock); ``finished`` carries settled runs'
    counts from one scrape to the next; ``extra`` adds in-process families (HTTP requests)."""
    checks = list(checks)
    metrics = GuardMetrics()
    metrics.refresh(conn, checks, campaigns)
    families = [*sending_families(conn, now, finished or FinishedRuns()),
                *service_families(conn, now), *page_families(conn, checks)]
    metrics.registry.register(Families(families))
    for collector in extra:
        metrics.registry.register(collector)
    return metrics.render()
