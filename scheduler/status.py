"""What ``martech status`` and the start-up banner show: campaigns, schedules, checks, nodes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from rich.table import Table

from scheduler.clock import utc
from scheduler.config.loader import LoadedConfig
from scheduler.engine import Engine
from scheduler.store import checks as check_store
from scheduler.store import heartbeats, pauses
from scheduler.store import runs as run_store
from scheduler.store.tables import check_results, check_state, deliveries, runs


def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def short_time(iso: str | None) -> str:
    """Tables show minutes in UTC; --json keeps full ISO timestamps for scripts."""
    if not iso:
        return "—"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def schedule_table(engine: Engine) -> Table:
    table = Table(title="Schedule", title_justify="left")
    for column in ("job", "kind", "when", "next fire"):
        table.add_column(column, overflow="fold")
    next_times = engine.next_fire_times()
    for key in sorted(engine.specs, key=lambda k: (next_times[k] is None, next_times[k], k)):
        spec = engine.specs[key]
        table.add_row(key, spec.kind, spec.schedule.describe(), fmt_time(next_times[key]))
    if not engine.specs:
        table.add_row("(no scheduled jobs)", "", "", "")
    return table


def check_rows(conn: sa.Connection, config: LoadedConfig) -> list[dict[str, Any]]:
    states = {row.check_name: row for row in conn.execute(sa.select(check_state))}
    guarded: dict[str, list[str]] = {}
    all_pauses = pauses.all_reasons(conn)
    for campaign, reasons in all_pauses.items():
        for p in reasons:
            if p.reason.startswith("guard:"):
                guarded.setdefault(p.reason.removeprefix("guard:"), []).append(campaign)
    out = []
    for name, check in config.checks.checks.items():
        state = states.get(name)
        last = conn.execute(
            sa.select(check_results.c.outcome, check_results.c.detail, check_results.c.at,
                      check_results.c.findings)
            .where(check_results.c.check_name == name)
            .order_by(check_results.c.at.desc()).limit(1)
        ).first()
        out.append({
            "check": name,
            "type": check.probe_kind,
            "verdict": state.verdict if state else "pending",
            "since": state.since.isoformat() if state else None,
            "last_result": (f"{last.outcome}: {last.detail or ''}".strip() if last else None),
            "last_at": last.at.isoformat() if last else None,
            "findings": last.findings if last else None,  # page checks: each measurement
            "paused_campaigns": sorted(guarded.get(name, [])),
        })
    return out


def checks_table(conn: sa.Connection, config: LoadedConfig) -> Table:
    table = Table(title="Health checks", title_justify="left")
    for column in ("check", "type", "state", "since", "last result", "holds paused"):
        table.add_column(column)
    for row in check_rows(conn, config):
        table.add_row(row["check"], row["type"], row["verdict"], short_time(row["since"]),
                      row["last_result"] or "—", ", ".join(row["paused_campaigns"]) or "—")
    if not config.checks.checks:
        table.add_row("(no checks configured)", "", "", "", "", "")
    return table


def campaign_rows(conn: sa.Connection, config: LoadedConfig,
                  next_times: dict[str, datetime | None]) -> list[dict[str, Any]]:
    latest = run_store.latest_per_campaign(conn)
    missed = run_store.missed_counts(conn)
    all_pauses = pauses.all_reasons(conn)
    held: dict[str, int] = {}
    for run in run_store.by_status(conn, ["held"]):
        held[run.campaign] = held.get(run.campaign, 0) + 1
    out = []
    for name, campaign in sorted(config.campaigns.items()):
        last = latest.get(name)
        keys = [k for k in next_times if k == name or k.startswith(name + "/")]
        upcoming = sorted(t for k in keys if (t := next_times[k]) is not None)
        out.append({
            "campaign": name,
            "kind": campaign.kind,
            "enabled": campaign.enabled,
            "schedule": _describe_schedule(campaign),
            "next_run": upcoming[0].isoformat() if upcoming else None,
            "last_run": last.scheduled_at.isoformat() if last else None,
            "last_outcome": (last.status + (f" ({last.detail})" if last.detail else ""))
            if last else None,
            "missed": missed.get(name, 0),
            "held": held.get(name, 0),
            "paused": [{"reason": p.reason, "detail": p.detail, "since": p.since.isoformat()}
                       for p in all_pauses.get(name, [])],
        })
    return out


def _describe_schedule(campaign: Any) -> str:
    schedule = getattr(campaign, "schedule", None)
    if schedule is not None:
        return str(schedule.to_schedule().describe())
    return str(campaign.schedule_text())


def campaigns_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Campaigns", title_justify="left")
    for column in ("campaign", "kind", "schedule", "next run", "last run", "outcome",
                   "paused because"):
        table.add_column(column, overflow="fold")
    for row in rows:
        paused = ", ".join(p["reason"] for p in row["paused"]) or "—"
        if row["held"]:
            paused += f" ({row['held']} run(s) held)"
        outcome = row["last_outcome"] or "—"
        if row["missed"]:
            outcome += f"; {row['missed']} missed"
        table.add_row(row["campaign"] + ("" if row["enabled"] else " (disabled)"), row["kind"],
                      row["schedule"], short_time(row["next_run"]), short_time(row["last_run"]),
                      outcome, paused)
    return table


def zone_progress(conn: sa.Connection, statuses: tuple[str, ...] = run_store.ACTIVE,
                  run_ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Runs whose deliveries fall due at different times (per-recipient zones): per due
    time, its zones (from the run's stats) and how many rows are in each status. Active runs
    for ``status``; a report passes the statuses (or run ids) of its period."""
    stmt = (sa.select(runs.c.id, runs.c.campaign, runs.c.status, deliveries.c.due_at,
                      deliveries.c.status.label("delivery"), sa.func.count().label("n"))
            .select_from(deliveries.join(runs, deliveries.c.run_id == runs.c.id))
            .where(runs.c.status.in_(statuses), deliveries.c.due_at.is_not(None),
                   runs.c.id.in_(run_ids) if run_ids is not None else sa.true())
            .group_by(runs.c.id, runs.c.campaign, runs.c.status, deliveries.c.due_at,
                      deliveries.c.status)
            .order_by(runs.c.id, deliveries.c.due_at))
    grouped = conn.execute(stmt).all()
    stats = dict(conn.execute(sa.select(runs.c.id, runs.c.stats).where(  # type: ignore[arg-type]
        runs.c.id.in_({r.id for r in grouped}))).all()) if grouped else {}
    out: dict[int, dict[str, Any]] = {}
    for row in grouped:
        run = out.setdefault(row.id, {"run_id": row.id, "campaign": row.campaign,
                                      "status": row.status, "due": {}})
        zones = (stats.get(row.id) or {}).get("zones", {})
        due_at = utc(row.due_at)
        slot = run["due"].setdefault(due_at.isoformat(), {
            "due_at": due_at.isoformat(), "counts": {},
            "zones": sorted(z for z, v in zones.items()
                            if datetime.fromisoformat(v["due_at"]) == due_at)})
        slot["counts"][row.delivery] = int(row.n)
    return [{**r, "due": list(r["due"].values())} for r in out.values()]


def zones_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Sending across time zones", title_justify="left")
    for column in ("campaign", "run", "due (UTC)", "zones", "sent", "waiting", "other"):
        table.add_column(column, overflow="fold")
    for run in rows:
        for slot in run["due"]:
            counts = dict(slot["counts"])
            sent = counts.pop("sent", 0)
            waiting = counts.pop("pending", 0) + counts.pop("sending", 0)
            other = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "—"
            table.add_row(run["campaign"], f"{run['run_id']} ({run['status']})",
                          short_time(slot["due_at"]), ", ".join(slot["zones"]) or "—",
                          str(sent), str(waiting), other)
    return table


def node_rows(conn: sa.Connection, stale_after_s: float) -> list[dict[str, Any]]:
    """Every node the database knows: its newest heartbeat and age by the database's clock,
    whether it is alive, and what it holds (active runs, ``sending`` deliveries it claimed,
    check leases)."""
    beats: dict[str, list[heartbeats.Beat]] = {}
    for beat in heartbeats.latest(conn):
        beats.setdefault(beat.node, []).append(beat)
    held_runs = run_store.count_by_node(conn)
    sending = {row[0]: int(row[1]) for row in conn.execute(
        sa.select(deliveries.c.claimed_by, sa.func.count())
        .where(deliveries.c.status == "sending", deliveries.c.claimed_by.is_not(None))
        .group_by(deliveries.c.claimed_by))}
    checks = check_store.live_leases_by_node(conn)
    out = []
    for node in sorted(beats.keys() | held_runs.keys() | sending.keys() | checks.keys()):
        mine = beats.get(node, [])
        newest = min(mine, key=lambda b: b.age_s) if mine else None
        out.append({
            "node": node,
            "roles": sorted(b.role for b in mine),
            "last_heartbeat": newest.at.isoformat() if newest else None,
            "heartbeat_age_s": round(newest.age_s, 1) if newest else None,
            "alive": newest is not None and newest.age_s < stale_after_s,
            "runs": held_runs.get(node, {}),
            "sending": sending.get(node, 0),
            "checks": checks.get(node, 0),
        })
    return out


def nodes_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Nodes", title_justify="left")
    for column in ("node", "roles", "last heartbeat", "state", "runs", "sending", "checks"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if row["last_heartbeat"] is None:
            state = "no heartbeat"
        else:
            state = f"{'alive' if row['alive'] else 'dead'} ({row['heartbeat_age_s']:.0f}s ago)"
        runs = ", ".join(f"{n} {status}" for status, n in sorted(row["runs"].items())) or "—"
        table.add_row(row["node"], ", ".join(row["roles"]) or "—",
                      short_time(row["last_heartbeat"]), state, runs,
                      str(row["sending"]), str(row["checks"]))
    if not rows:
        table.add_row("(no node has started yet)", "", "", "", "", "", "")
    return table
