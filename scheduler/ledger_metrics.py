"""Sending, runs, outbox and nodes as Prometheus metrics, read from the database at scrape time.

Several nodes share one database: every node's ``/metrics`` reports the same figures, and they
agree with the ledger because they *are* the ledger (counts of ``deliveries`` by status), not
in-process counters that a restart resets or a second node splits. Counts of finished runs
never change, so each scraper keeps them (``FinishedRuns``) and only active or newly finished
runs are counted again. Labels are bounded: campaign, check, topic, channel, status, node and
role names, never a recipient or a URL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from scheduler.clock import utc
from scheduler.store.runs import ACTIVE, FINISHED
from scheduler.store.tables import (
    check_results,
    deliveries,
    node_heartbeats,
    outbox,
    runs,
    tracking_events,
)

MESSAGE_STATUSES = ("sent", "failed", "bounced", "unknown")
LATENESS_BUCKETS_S = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0)
RATE_WINDOW = timedelta(seconds=60)
SETTLED = timedelta(seconds=60)  # a run finished this long ago has its final counts
CLI_ROLE = "sender"  # per-process CLI heartbeats (pids in their names): not labels


@dataclass(frozen=True)
class RunFacts:
    campaign: str
    kind: str
    status: str
    lateness_s: float | None
    counts: dict[str, int]


@dataclass
class FinishedRuns:
    """Facts of settled runs by id: they no longer change, so they are read once."""

    facts: dict[int, RunFacts] = field(default_factory=dict)


def _run_facts(conn: sa.Connection, now: datetime, cache: FinishedRuns) -> list[RunFacts]:
    rows = conn.execute(sa.select(runs.c.id, runs.c.campaign, runs.c.kind, runs.c.status,
                                  runs.c.trigger, runs.c.scheduled_at, runs.c.started_at,
                                  runs.c.finished_at)).all()
    fresh = [r for r in rows if r.id not in cache.facts]
    counts: dict[int, dict[str, int]] = {}
    ids = [r.id for r in fresh]
    for start in range(0, len(ids), 500):
        stmt = (sa.select(deliveries.c.run_id, deliveries.c.status, sa.func.count())
                .where(deliveries.c.run_id.in_(ids[start:start + 500]))
                .group_by(deliveries.c.run_id, deliveries.c.status))
        for run_id, status, n in conn.execute(stmt):
            counts.setdefault(run_id, {})[status] = int(n)
    out = [cache.facts[r.id] for r in rows if r.id in cache.facts]
    for r in fresh:
        lateness = None
        if r.started_at is not None and r.trigger == "schedule":
            lateness = max((utc(r.started_at) - utc(r.scheduled_at)).total_seconds(), 0.0)
        facts = RunFacts(r.campaign, r.kind, r.status, lateness, counts.get(r.id, {}))
        out.append(facts)
        if (r.status in FINISHED and r.finished_at is not None
                and now - utc(r.finished_at) > SETTLED):
            cache.facts[r.id] = facts
    return out


def sending_families(conn: sa.Connection, now: datetime, cache: FinishedRuns) -> list[Metric]:
    facts = _run_facts(conn, now, cache)
    messages = CounterMetricFamily(
        "martech_messages", "Newsletter messages by outcome, from the delivery ledger",
        labels=["campaign", "status"])
    totals: dict[tuple[str, str], int] = {}
    runs_by: dict[tuple[str, str, str], int] = {}
    last_late: dict[str, float] = {}
    late_values: list[float] = []
    for f in facts:
        for status in MESSAGE_STATUSES:
            if f.kind == "newsletter" or f.counts.get(status):
                totals[(f.campaign, status)] = totals.get((f.campaign, status), 0) \
                    + f.counts.get(status, 0)
        runs_by[(f.campaign, f.kind, f.status)] = runs_by.get((f.campaign, f.kind, f.status),
                                                              0) + 1
        if f.lateness_s is not None:
            late_values.append(f.lateness_s)
            last_late[f.campaign] = f.lateness_s  # rows come in id order: the latest wins
    for (campaign, status), n in sorted(totals.items()):
        messages.add_metric([campaign, status], n)
    run_family = CounterMetricFamily("martech_runs", "Runs by campaign, kind and outcome",
                                     labels=["campaign", "kind", "status"])
    for key, n in sorted(runs_by.items()):
        run_family.add_metric(list(key), n)
    lateness = HistogramMetricFamily(
        "martech_run_lateness_seconds", "Scheduled runs: due time to start", labels=[])
    buckets = [(str(b), float(sum(1 for v in late_values if v <= b)))
               for b in LATENESS_BUCKETS_S] + [("+Inf", float(len(late_values)))]
    lateness.add_metric([], buckets, sum_value=sum(late_values))
    last = GaugeMetricFamily("martech_run_last_lateness_seconds",
                             "The latest scheduled run's lateness", labels=["campaign"])
    for campaign, value in sorted(last_late.items()):
        last.add_metric([campaign], value)
    return [messages, run_family, lateness, last, *_pending(conn, now)]


def _pending(conn: sa.Connection, now: datetime) -> list[Metric]:
    active = sa.select(runs.c.id).where(runs.c.status.in_(ACTIVE))
    ready = sa.or_(deliveries.c.status == "sending", sa.and_(
        sa.or_(deliveries.c.due_at.is_(None), deliveries.c.due_at <= now),
        sa.or_(deliveries.c.next_attempt_at.is_(None), deliveries.c.next_attempt_at <= now)))
    waiting = (sa.select(runs.c.campaign, sa.func.count(),
                         sa.func.sum(sa.case((ready, 1), else_=0)))
               .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
               .where(deliveries.c.run_id.in_(active),
                      deliveries.c.status.in_(("pending", "sending")))
               .group_by(runs.c.campaign).order_by(runs.c.campaign))
    pending = GaugeMetricFamily("martech_deliveries_pending",
                                "Deliveries of active runs not yet sent", labels=["campaign"])
    due = GaugeMetricFamily("martech_deliveries_due", "Of those, the ones due now (send time "
                            "and retry time reached, or in flight)", labels=["campaign"])
    for campaign, n, n_ready in conn.execute(waiting):
        pending.add_metric([campaign], n)
        due.add_metric([campaign], int(n_ready or 0))
    recent = (sa.select(runs.c.campaign, sa.func.count())
              .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
              .where(sa.or_(runs.c.status.in_(ACTIVE),
                            runs.c.finished_at >= now - RATE_WINDOW - SETTLED),
                     deliveries.c.status == "sent", deliveries.c.sent_at >= now - RATE_WINDOW)
              .group_by(runs.c.campaign))
    rate = GaugeMetricFamily("martech_send_rate_per_second",
                             "Messages sent per second over the last minute",
                             labels=["campaign"])
    for campaign, n in conn.execute(recent):
        rate.add_metric([campaign], n / RATE_WINDOW.total_seconds())
    return [pending, due, rate]


def service_families(conn: sa.Connection, now: datetime) -> list[Metric]:
    """The outbox (alerts, reminders, report mails; e-mail and webhook), broken links and
    node heartbeats."""
    total = CounterMetricFamily("martech_outbox_messages", "Notifications by outcome",
                                labels=["topic", "channel", "status"])
    for topic, channel, status, n in conn.execute(
            sa.select(outbox.c.topic, outbox.c.channel, outbox.c.status, sa.func.count())
            .group_by(outbox.c.topic, outbox.c.channel, outbox.c.status)
            .order_by(outbox.c.topic, outbox.c.channel, outbox.c.status)):
        total.add_metric([topic, channel, status], n)
    backlog = GaugeMetricFamily("martech_outbox_pending", "Notifications waiting to be sent",
                                labels=["topic"])
    oldest = GaugeMetricFamily("martech_outbox_oldest_pending_age_seconds",
                               "Age of the oldest waiting notification", labels=["topic"])
    for topic, n, first in conn.execute(
            sa.select(outbox.c.topic, sa.func.count(), sa.func.min(outbox.c.created_at))
            .where(outbox.c.status == "pending").group_by(outbox.c.topic)):
        backlog.add_metric([topic], n)
        oldest.add_metric([topic], max((now - utc(first)).total_seconds(), 0.0))
    broken = CounterMetricFamily("martech_links_broken", "Broken links found before sending "
                                 "(newsletters) or reminding (posts)", labels=["campaign"])
    for campaign, n in conn.execute(
            sa.select(tracking_events.c.campaign, sa.func.count())
            .where(tracking_events.c.kind == "link_broken")
            .group_by(tracking_events.c.campaign)):
        broken.add_metric([campaign or ""], n)
    age = GaugeMetricFamily("martech_node_heartbeat_age_seconds",
                            "Seconds since each node's role last reported alive",
                            labels=["node", "role"])
    for node, role, at in conn.execute(
            sa.select(node_heartbeats.c.node, node_heartbeats.c.role, node_heartbeats.c.at)
            .where(node_heartbeats.c.role != CLI_ROLE)
            .order_by(node_heartbeats.c.node, node_heartbeats.c.role)):
        age.add_metric([node, role], max((now - utc(at)).total_seconds(), 0.0))
    return [total, backlog, oldest, broken, age]


def page_families(conn: sa.Connection, checks: Iterable[str]) -> list[Metric]:
    """The latest ``page`` check measurements, per check."""
    weight = GaugeMetricFamily("martech_page_weight_bytes", "Landing page weight as "
                               "transferred (page + assets)", labels=["check"])
    ttfb = GaugeMetricFamily("martech_page_ttfb_seconds", "Landing page time to first byte",
                             labels=["check"])
    problems = GaugeMetricFamily("martech_page_problems", "Failed page requirements",
                                 labels=["check"])
    for name in checks:
        # The latest result: a page that stopped answering has no measurements to show.
        findings: Any = conn.execute(
            sa.select(check_results.c.findings).where(check_results.c.check_name == name)
            .order_by(check_results.c.at.desc(), check_results.c.id.desc()).limit(1)
        ).scalar_one_or_none()
        if not isinstance(findings, dict) or "weight_bytes" not in findings:
            continue
        weight.add_metric([name], findings["weight_bytes"])
        ttfb.add_metric([name], findings.get("ttfb_ms", 0.0) / 1000.0)
        problems.add_metric([name], len(findings.get("problems", [])))
    return [weight, ttfb, problems]


class Collects(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class Families:
    """A collector that yields families computed beforehand (one scrape's worth)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)
