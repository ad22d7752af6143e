"""The IT health guard: checks of the hosting, verdicts with hysteresis, campaigns paused and
resumed by it (ARCHITECTURE.md, invariants 4, 5). The pieces live in sibling modules:

- ``checks/*``      probes (http, tcp, dns, smtp, tls), each step under a timeout
- ``hysteresis``    pure verdict logic
- ``targets``       which campaigns a check or maintenance window covers
- ``decide``        one transaction per decision: results, verdicts, pauses, alerts
- ``alerts``        e-mail and webhook alert rendering, outbox enqueueing
- ``runner``        scheduling: intervals, retries, concurrency bound, no overlap
- ``cli``           ``martech checks`` and ``martech metrics``
"""

from __future__ import annotations

from jobs.guard.cli import add_commands
from jobs.guard.runner import Guard
from scheduler.context import ServiceContext
from scheduler.kinds import Registry

__all__ = ["Guard", "register", "run_guard"]


async def run_guard(ctx: ServiceContext) -> None:
    """Background component of ``martech run``: the guard, until ``ctx.stopping`` is set."""
    guard = Guard(ctx)
    ctx.extras["guard"] = guard
    await guard.run()


def register(registry: Registry) -> None:
    registry.components["guard"] = run_guard
    registry.cli.append(add_commands)
