"""Social-post reminders (issue 5): registered kind, outbox component and CLI."""

from __future__ import annotations

from jobs.base import Registry


def register(registry: Registry) -> None:
    from scheduler.outbox import run_outbox

    registry.components["outbox"] = run_outbox
