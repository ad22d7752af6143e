"""The guard's view of targets: re-exported from ``scheduler.config.targets`` (shared with
reports), plus the name of the guard's own connectivity check."""

from __future__ import annotations

from scheduler.config.targets import (
    CONNECTIVITY,
    Span,
    active_span,
    covered_by,
    guard_map,
    guarded_by,
    last_span_before,
    one_off_span,
)

__all__ = ["CONNECTIVITY", "Span", "active_span", "covered_by", "guard_map", "guarded_by",
           "last_span_before", "one_off_span"]
