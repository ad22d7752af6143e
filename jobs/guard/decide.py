"""The guard's decisions, each in one transaction: results recorded, verdicts updated, pause
reasons added or removed, and the alerts about it enqueued — together or not at all."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from jobs.guard.alerts import Alert, enqueue_alert, held_summary
from jobs.guard.checks.base import CheckResult
from jobs.guard.hysteresis import Rules, apply, initial
from jobs.guard.targets import CONNECTIVITY, active_span, covered_by, guarded_by
from scheduler.config.loader import LoadedConfig
from scheduler.store import checks as check_store
from scheduler.store import pauses
from scheduler.store.checks import ResultRow, StateRow
from scheduler.store.tables import pauses as pauses_table

log = logging.getLogger("martech.guard")
GUARD_BY = "guard"


@dataclass(frozen=True)
class Observed:
    check: str
    at: datetime  # when the probe started
    result: CheckResult
    lease_gen: int | None = None  # the check lease it was probed under; None: not leased


@dataclass(frozen=True)
class Change:
    check: str
    event: str  # down | up | unknown | visible
    paused: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Env:
    """What decisions need besides the connection: config, where templates live, who we are."""

    config: LoadedConfig
    templates_dir: Path
    node: str

    def rules(self, check: str) -> Rules:
        checks = self.config.checks
        cfg = checks.connectivity if check == CONNECTIVITY else checks.checks.get(check)
        return Rules.of(cfg, checks.defaults) if cfg is not None else Rules()

    def alert(self, conn: sa.Connection, alert: Alert) -> None:
        checks = self.config.checks
        enqueue_alert(conn, alert, checks.alerts, self.templates_dir, checks.alert_from)


def maintenance_cover(config: LoadedConfig, now: datetime) -> tuple[set[str], bool]:
    """Campaigns under an active window now, and whether a window covers everything."""
    covered: set[str] = set()
    everything = False
    for window in config.checks.maintenance:
        if active_span(window, now) is None:
            continue
        everything = everything or window.selector().all
        covered.update(covered_by(config, window))
    return covered, everything


def quiet(config: LoadedConfig, campaigns: Sequence[str], now: datetime) -> bool:
    """Nobody is paged about a check whose campaigns are all in maintenance."""
    covered, everything = maintenance_cover(config, now)
    return everything or (bool(campaigns) and set(campaigns) <= covered)


def _still_paused(conn: sa.Connection, campaigns: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in campaigns:
        reasons = [p.reason for p in pauses.reasons(conn, name)]
        if reasons:
            out[name] = reasons
    return out


def apply_batch(conn: sa.Connection, env: Env, batch: Sequence[Observed]
                ) -> tuple[list[Change], dict[str, StateRow]]:
    """Record raw results, fold them into verdicts, act on every transition.

    Returns the changes and the stored verdicts of the batch's checks (read under lock, so
    they include other nodes' results). A result probed under a check lease that has since
    passed to another node is dropped: that node probes the check now, and hysteresis counts
    each interval's result once, not once per node.
    """
    batch = _still_leased(conn, env, batch)
    check_store.record_results(conn, [
        ResultRow(o.check, o.at, o.result.outcome, o.result.latency_ms, o.result.detail,
                  env.node, dict(o.result.findings) if o.result.findings else None)
        for o in batch])
    states = check_store.states(conn, {o.check for o in batch}, lock=True)
    changed: dict[str, StateRow] = {}
    changes: list[Change] = []
    rules: dict[str, Rules] = {}
    for obs in sorted(batch, key=lambda o: o.at):
        before = changed.get(obs.check) or states.get(obs.check) or initial(obs.check, obs.at)
        if obs.check not in rules:
            rules[obs.check] = env.rules(obs.check)
        after, transition = apply(before, obs.result.outcome, rules[obs.check], obs.at,
                                  obs.result.detail)
        if transition is not None:
            change = _act(conn, env, obs, before, transition)
            if change is not None:
                changes.append(change)
                after = after.with_(last_alert_at=obs.at)
        changed[obs.check] = after
    check_store.save_states(conn, list(changed.values()))
    return changes, changed


def _still_leased(conn: sa.Connection, env: Env, batch: Sequence[Observed]
                  ) -> Sequence[Observed]:
    leased = {o.check for o in batch if o.lease_gen is not None}
    if not leased:
        return batch
    holders = check_store.lease_holders(conn, leased, lock=True)
    kept = []
    for obs in batch:
        if obs.lease_gen is not None and holders.get(obs.check) != (env.node, obs.lease_gen):
            log.warning("late check result dropped: the check's lease passed to %s",
                        holders.get(obs.check, ("nobody",))[0],
                        extra={"action": "fenced", "check": obs.check})
            continue
        kept.append(obs)
    return kept


def _act(conn: sa.Connection, env: Env, obs: Observed, before: StateRow,
         transition: str) -> Change | None:
    name, at, detail = obs.check, obs.at, obs.result.detail
    if name == CONNECTIVITY:
        # "Cannot see" is not "down": tell IT, pause nothing.
        if transition == "up" and before.verdict == "pending":
            return None
        event = "unknown" if transition == "down" else "visible"
        env.alert(conn, Alert(event, "guard connectivity", at, detail=detail,
                              dedupe=f"{name}:{event}:{at.isoformat()}"))
        log.warning("guard connectivity %s: %s", event, detail,
                    extra={"action": f"guard_{event}", "check": name})
        return Change(name, event)
    if name not in env.config.checks.checks:
        return None
    campaigns = guarded_by(env.config, name)
    reason = pauses.guard_reason(name)
    if transition == "down":
        paused = [c for c in campaigns
                  if pauses.add(conn, c, reason, at, detail=detail, by=GUARD_BY)]
        alert = Alert("down", name, at, detail=detail, since=at, paused=campaigns,
                      held=held_summary(conn, campaigns),
                      dedupe=f"{name}:down:{at.isoformat()}")
        change = Change(name, "down", paused=tuple(paused))
    else:
        if before.verdict == "pending":
            return None  # first verdict after start-up: nothing was paused, nothing to say
        held_names = pauses.campaigns_with_reason(conn, reason)
        for campaign in held_names:
            pauses.remove(conn, campaign, reason, at)
        still = _still_paused(conn, held_names)
        resumed = [c for c in held_names if c not in still]
        alert = Alert("up", name, at, detail=detail, since=before.since, resumed=resumed,
                      still_paused=still, held=held_summary(conn, sorted(held_names)),
                      dedupe=f"{name}:up:{at.isoformat()}")
        change = Change(name, "up", resumed=tuple(resumed))
    log.warning("check %s is %s: %s", name, transition, detail,
                extra={"action": f"guard_{transition}", "check": name,
                       "campaigns": ",".join(campaigns)})
    if quiet(env.config, campaigns, at):
        log.info("alert not paged: maintenance window", extra={"action": "alert_quiet",
                                                              "check": name})
    else:
        env.alert(conn, alert)
    return change


def reconcile(conn: sa.Connection, env: Env, now: datetime) -> None:
    """Make guard pause reasons match the stored verdicts and current config.

    Covers config edits (a campaign newly guarded by a check that is down is paused; a check
    removed from the config releases its campaigns) and restarts: verdicts live in the
    database, so a restart never resumes a campaign whose check is still down.
    """
    states = check_store.states(conn, verdict="down")
    want: set[tuple[str, str]] = set()
    for name in env.config.checks.checks:
        state = states.get(name)
        if state is not None:
            want.update((c, pauses.guard_reason(name)) for c in guarded_by(env.config, name))
    have = {(row.campaign, row.reason) for row in conn.execute(
        sa.select(pauses_table.c.campaign, pauses_table.c.reason)
        .where(pauses_table.c.reason.like("guard:%")))}
    for campaign, reason in sorted(want - have):
        detail = states[reason.removeprefix("guard:")].last_detail
        pauses.add(conn, campaign, reason, now, detail=detail, by=GUARD_BY)
    for campaign, reason in sorted(have - want):
        pauses.remove(conn, campaign, reason, now)


def send_reminders(conn: sa.Connection, env: Env, now: datetime) -> list[str]:
    """Checks still down for ``remind_every`` since their last alert get a reminder."""
    every = env.config.checks.remind_every
    if not every:
        return []
    reminded = []
    states = check_store.states(conn, verdict="down", lock=True)
    for name, state in states.items():
        if name not in env.config.checks.checks:
            continue
        last = state.last_alert_at or state.since
        if now - last < every:
            continue
        campaigns = pauses.campaigns_with_reason(conn, pauses.guard_reason(name))
        if not quiet(env.config, guarded_by(env.config, name), now):
            env.alert(conn, Alert("reminder", name, now, detail=state.last_detail or "",
                                  since=state.since, paused=sorted(campaigns),
                                  held=held_summary(conn, sorted(campaigns)),
                                  dedupe=f"{name}:reminder:{now.isoformat()}"))
        check_store.save_states(conn, [state.with_(last_alert_at=now)])
        reminded.append(name)
    return reminded


def sync_maintenance(conn: sa.Connection, env: Env, now: datetime) -> list[str]:
    """Pause what active windows cover (ahead of any failure); release what ended."""
    events = []
    active: dict[str, set[str]] = {}
    for window in env.config.checks.maintenance:
        span = active_span(window, now)
        if span is None:
            continue
        covered = covered_by(env.config, window)
        active[window.name] = set(covered)
        reason = pauses.maintenance_reason(window.name)
        detail = f"until {span.end:%Y-%m-%d %H:%M} UTC"
        started = [c for c in covered
                   if pauses.add(conn, c, reason, now, detail=detail, by=GUARD_BY)]
        if started:
            env.alert(conn, Alert("maintenance_start", window.name, now, since=span.start,
                                  window_end=span.end, paused=started,
                                  held=held_summary(conn, started),
                                  dedupe=f"maint:{window.name}:{span.key()}:start"))
            events.append(f"{window.name}:start")
    have: dict[str, list[tuple[str, datetime]]] = {}
    for row in conn.execute(sa.select(pauses_table.c.campaign, pauses_table.c.reason,
                                      pauses_table.c.since)
                            .where(pauses_table.c.reason.like("maintenance:%"))):
        have.setdefault(row.reason.removeprefix("maintenance:"), []).append(
            (row.campaign, row.since))
    for window_name, rows in sorted(have.items()):
        candidates = [(c, since) for c, since in rows if c not in active.get(window_name, set())]
        # Only what this node actually released: with several nodes, the one whose delete
        # wins alerts; the key is the window's own start, not this node's clock.
        ending = sorted(c for c, _since in candidates
                        if pauses.remove(conn, c, pauses.maintenance_reason(window_name), now))
        if not ending:
            continue
        started_at = min(since for c, since in candidates if c in ending)
        still = _still_paused(conn, ending)
        env.alert(conn, Alert("maintenance_end", window_name, now,
                              resumed=[c for c in ending if c not in still],
                              still_paused=still, held=held_summary(conn, ending),
                              dedupe=f"maint:{window_name}:{started_at.isoformat()}:end"))
        events.append(f"{window_name}:end")
    return events
