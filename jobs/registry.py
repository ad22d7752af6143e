"""The composition root: every job kind, background component and CLI extension."""

from __future__ import annotations

from jobs.base import Registry


def build_registry() -> Registry:
    from jobs import guard, newsletter, post_reminder, report
    from scheduler.http_app import run_http_app

    registry = Registry()
    for module in (newsletter, post_reminder, report, guard):
        module.register(registry)
    registry.components["http"] = run_http_app
    return registry
