"""The report's charts as PNG bytes, drawn by jobs/report/plots.py on first use.

Why the deferred import: every ``martech`` command builds the whole registry
(martech/compose.py), so a top-level ``import matplotlib`` (numpy under it) adds 0.5-1.3 s
to the start of ``martech pause``, ``martech status`` and the rest. A pause that lands that
much later lets a fast ``martech send --now`` finish before it (tests/test_newsletter_cli.py,
``test_send_now_honours_manual_pause_and_resume``). Only drawing a chart needs matplotlib;
tests/test_report.py checks that loading the CLI does not import it.
"""

from __future__ import annotations

from jobs.report.model import Report


def joined_chart(report: Report) -> bytes:
    """Sends per hour per campaign on one axis, incidents and maintenance as bands."""
    from jobs.report import plots  # deferred: see the module docstring

    return plots.joined_chart(report)


def charts(report: Report) -> dict[str, bytes]:
    """Every chart of the report by name; the HTML refers to them by these names."""
    from jobs.report import plots  # deferred: see the module docstring

    return plots.charts(report)
