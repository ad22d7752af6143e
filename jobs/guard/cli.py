"""``martech checks`` (run every check once, now) and ``martech metrics`` (text exposition)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click
from rich.table import Table

from jobs.guard.checks.base import CheckResult, run_probe
from jobs.guard.checks.factory import build_probe
from jobs.guard.checks.http import new_session
from jobs.guard.hysteresis import Rules
from jobs.guard.targets import CONNECTIVITY, guarded_by
from scheduler.cli import State, console, friendly_errors
from scheduler.clock import SystemClock
from scheduler.config.checks import CheckConfig
from scheduler.config.loader import LoadedConfig
from scheduler.metrics import render_from_db


async def run_all_once(config: LoadedConfig, helo_name: str | None = None
                       ) -> dict[str, tuple[CheckConfig, CheckResult]]:
    """Every check (and the connectivity check) once, concurrently under the configured bound."""
    checks: dict[str, CheckConfig] = dict(config.checks.checks)
    if config.checks.connectivity is not None:
        checks[CONNECTIVITY] = config.checks.connectivity
    sem = asyncio.Semaphore(config.checks.max_concurrent_checks)
    session = new_session(config.checks.max_concurrent_checks)
    clock = SystemClock()

    async def one(cfg: CheckConfig) -> CheckResult:
        spec = getattr(cfg, cfg.probe_kind)
        if getattr(spec, "ca_file", None):
            cfg = cfg.model_copy(update={cfg.probe_kind: spec.model_copy(
                update={"ca_file": str(config.path(spec.ca_file))})})
        probe = build_probe(cfg, session, clock, helo_name)
        timeout_s = Rules.of(cfg, config.checks.defaults).timeout.total_seconds()
        async with sem:
            return await run_probe(probe, timeout_s)

    try:
        results = await asyncio.gather(*(one(cfg) for cfg in checks.values()))
    finally:
        await session.close()
    return {name: (cfg, res) for (name, cfg), res in zip(checks.items(), results, strict=True)}


def results_table(config: LoadedConfig, results: dict[str, tuple[CheckConfig, CheckResult]]
                  ) -> Table:
    table = Table(title="Checks (run now)", title_justify="left")
    for column in ("check", "type", "result", "latency", "detail", "guards"):
        table.add_column(column, overflow="fold")
    for name, (cfg, res) in results.items():
        label = "connectivity" if name == CONNECTIVITY else name
        guards = "—" if name == CONNECTIVITY else ", ".join(guarded_by(config, name)) or "—"
        outcome = {"ok": "[green]ok[/]", "fail": "[red]FAIL[/]"}.get(res.outcome, res.outcome)
        table.add_row(label, cfg.probe_kind, outcome, f"{res.latency_ms:.0f} ms",
                      _detail(res), guards)
    if not results:
        table.add_row("(no checks configured)", "", "", "", "", "")
    return table


def _detail(res: CheckResult) -> str:
    """One line for most checks; a page check lists each finding on a line of its own."""
    findings = res.findings or {}
    problems, notes = list(findings.get("problems", [])), list(findings.get("notes", []))
    if not problems and not notes:
        return res.detail
    if problems:
        head = f"{len(problems)} problem(s)"
    else:
        head = res.detail.split(f", {len(notes)} note(s)", 1)[0]
    lines = [f"• {p['message']}" for p in problems] + [f"◦ {n['message']}" for n in notes]
    return "\n".join([head, *lines])


@click.command("checks")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@friendly_errors
def checks_cmd(state: State, as_json: bool) -> None:
    """Run every health check once, now, and print the results (exit 1 if any failed).

    Nothing is recorded and no campaign is paused: the running guard decides that.
    """
    config = state.config()
    results = asyncio.run(run_all_once(config, state.settings.smtp_helo_name))
    failed = [n for n, (_c, r) in results.items() if not r.ok]
    if as_json:
        out: list[dict[str, Any]] = [
            {"check": n, "type": c.probe_kind, "outcome": r.outcome,
             "latency_ms": r.latency_ms, "detail": r.detail,
             **({"findings": dict(r.findings)} if r.findings else {})}
            for n, (c, r) in results.items()]
        click.echo(json.dumps(out, indent=2))
    else:
        console.print(results_table(config, results))
        console.print(f"{len(results) - len(failed)} ok, {len(failed)} failed", markup=False)
    sys.exit(1 if failed else 0)


@click.command("metrics")
@click.pass_obj
@friendly_errors
def metrics_cmd(state: State) -> None:
    """Print every metric /metrics serves (HTTP request counts aside) in Prometheus format."""
    config = state.config()
    with state.db().begin() as conn:
        text = render_from_db(conn, list(config.checks.checks), list(config.campaigns),
                              now=SystemClock().now())
    click.echo(text.decode(), nl=False)


def add_commands(group: click.Group) -> None:
    for command in (checks_cmd, metrics_cmd,):
        group.add_command(command)
