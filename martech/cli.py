"""The ``martech`` entry point: the mechanism's CLI with every job kind's commands added."""

from __future__ import annotations

from martech.compose import build_registry
from scheduler.cli import make_cli

main = make_cli(build_registry())
