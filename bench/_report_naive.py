"""The report's headline figures the way a user would first write them: fetch every row of the
period with the stdlib's sqlite3 and count in Python (bench/report.py's baseline).

It reads only raw rows, so it can check the report only where retention still keeps them
(the default 7-day report and the 7 days before it, inside the 30 raw days).
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

Maintenance = list[tuple[datetime, datetime]]  # windows that excuse every check


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _s(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _rate(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def campaign_figures(conn: sqlite3.Connection, names: list[str], since: datetime,
                     until: datetime) -> dict[str, float | None]:
    """sent, delivered, human open/click rates of the runs scheduled in [since, until);
    unsubscribes recorded in it."""
    marks = ",".join("?" * len(names))
    run_ids = {row[0] for row in conn.execute(
        f"SELECT id, scheduled_at FROM runs WHERE campaign IN ({marks})", names)
        if since <= _t(row[1]) < until}
    sent = delivered = 0
    for run_id, status in conn.execute("SELECT run_id, status FROM deliveries"):
        if run_id in run_ids:
            if status == "sent":
                delivered += 1
            if status in ("sent", "failed", "bounced", "unknown"):
                sent += 1
    opened: set[int] = set()
    clicked: set[int] = set()
    unsubscribes = 0
    for kind, run_id, delivery, traffic, campaign, at in conn.execute(
            "SELECT kind, run_id, delivery_id, traffic, campaign, at FROM tracking_events"):
        if kind in ("opened", "clicked") and run_id in run_ids and traffic == "human":
            (opened if kind == "opened" else clicked).add(delivery)
        elif kind == "unsubscribed" and campaign in names and since <= _t(at) < until:
            unsubscribes += 1
    return {"sent": float(sent), "delivered": float(delivered),
            "open_rate": _rate(len(opened), delivered),
            "click_rate": _rate(len(clicked), delivered), "unsubscribes": float(unsubscribes)}


def uptime(conn: sqlite3.Connection, caps_s: dict[str, float], maintenance: Maintenance,
           since: datetime, until: datetime, now: datetime) -> tuple[float | None, float | None]:
    """(all checks pooled, mean of each check's): time-weighted, a result counts until the
    check's next result, at most its cap; inside a maintenance window it counts as
    maintenance, not up or down. The report's headline shows the pooled figure for the
    period and the mean for the period before, so both are computed."""
    by_check: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    stop = until + timedelta(seconds=max(caps_s.values()))
    for name, at, outcome in conn.execute(
            "SELECT check_name, at, outcome FROM check_results ORDER BY check_name, at, id"):
        when = _t(at)
        if name in caps_s and since <= when < stop:
            by_check[name].append((when, outcome))
    ok = fail = 0.0
    each: list[float] = []
    for name, rows in by_check.items():
        mine = [0.0, 0.0]
        for k, (at, outcome) in enumerate(rows):
            if at >= until:
                break
            nxt = rows[k + 1][0] if k + 1 < len(rows) else now
            secs = min((nxt - at).total_seconds(), caps_s[name])
            if secs <= 0 or any(a <= at < b for a, b in maintenance):
                continue
            if outcome in ("ok", "fail"):
                mine[outcome == "fail"] += secs
        ok, fail = ok + mine[0], fail + mine[1]
        if sum(mine):
            each.append(round(100.0 * mine[0] / sum(mine), 3))
    pooled = round(100.0 * ok / (ok + fail), 3) if ok + fail else None
    return pooled, (round(sum(each) / len(each), 3) if each else None)


def incident_figures(conn: sqlite3.Connection, since: datetime, until: datetime,
                     now: datetime) -> dict[str, float]:
    """Incidents overlapping the period; sends they held: deliveries of the paused campaigns'
    runs active during the incident, not skipped and not sent before it began."""
    found = [(_t(a), _t(b) if b else now, json.loads(c or "[]")) for a, b, c in conn.execute(
        "SELECT started_at, ended_at, campaigns FROM incidents")
        if _t(a) < until and (b is None or _t(b) > since)]
    runs = {i: (c, _t(s), _t(f) if f else None) for i, c, s, f in conn.execute(
        "SELECT id, campaign, scheduled_at, finished_at FROM runs")}
    held = 0
    for start, end, campaigns in found:
        active = {i for i, (c, s, f) in runs.items()
                  if c in campaigns and s < end and (f is None or f > start)}
        for run_id, status, sent_at in conn.execute(
                "SELECT run_id, status, sent_at FROM deliveries"):
            if run_id in active and status != "skipped" and (
                    sent_at is None or _t(sent_at) >= start):
                held += 1
    return {"incidents": float(len(found)), "held_sends": float(held)}


def headline(path: Path, names: list[str], caps_s: dict[str, float], maintenance: Maintenance,
             since: datetime, until: datetime, now: datetime) -> dict[str, dict[str, float | None]]:
    """{key: {"now": value, "before": value}}, keys as the report's Headline.key."""
    conn = sqlite3.connect(path)
    try:
        prev = since - (until - since)
        now_f = campaign_figures(conn, names, since, until)
        before_f = campaign_figures(conn, names, prev, since)
        out: dict[str, dict[str, float | None]] = {
            k: {"now": now_f[k], "before": before_f[k]} for k in now_f}
        out["uptime"] = {"now": uptime(conn, caps_s, maintenance, since, until, now)[0],
                         "before": uptime(conn, caps_s, maintenance, prev, since, now)[1]}
        for k, v in incident_figures(conn, since, until, now).items():
            out[k] = {"now": v, "before": None}
        return out
    finally:
        conn.close()
