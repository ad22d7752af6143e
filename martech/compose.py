"""Build the registry: every job kind, background component, HTTP route and CLI extension.

The only module allowed to import both ``scheduler`` and every package of ``jobs``
(docs/ARCHITECTURE.md, "The boundary"); import-linter holds the rest to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jobs.guard import kind as guard
from jobs.newsletter import kind as newsletter
from jobs.reminders import kind as reminders
from jobs.report import kind as report
from scheduler import trust_cli
from scheduler.config.loader import LoadedConfig
from scheduler.config.loader import load_config as load_config_of
from scheduler.kinds import Registry

KIND_MODULES = (newsletter, reminders, report, guard)


def build_registry() -> Registry:
    registry = Registry()
    for module in KIND_MODULES:
        module.register(registry)
    registry.cli.append(trust_cli.register)  # keygen, forget, export-person
    # `martech run` spawns MARTECH_WORKERS - 1 of these (scheduler/workers.py).
    registry.worker_argv = [sys.executable, "-m", "martech", "worker"]
    return registry


def load_config(config_dir: Path) -> LoadedConfig:
    """``config_dir`` read with every kind this build knows (tests, benchmarks, tools)."""
    return load_config_of(config_dir, build_registry().campaign_types)
