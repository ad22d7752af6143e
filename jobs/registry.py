"""The composition root: every job kind, background component and CLI extension."""

from __future__ import annotations

from jobs.base import Registry


def build_registry() -> Registry:
    from jobs import guard, newsletter, post_reminder, report

    registry = Registry()
    for module in (newsletter, post_reminder, report, guard):
        module.register(registry)
    return registry
