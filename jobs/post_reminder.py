"""Placeholder: filled in by its issue."""

from __future__ import annotations

from jobs.base import Registry


def register(registry: Registry) -> None:
    del registry
