"""Pick the configured end of the pipeline (DESIGN invariant 7)."""

from __future__ import annotations

from scheduler.delivery.base import Transport
from scheduler.settings import Settings, TransportKind


def make_transport(settings: Settings, *, connections: int = 1) -> Transport:
    """The transport ``MARTECH_TRANSPORT`` names; ``connections`` sizes an SMTP pool."""
    if settings.transport == TransportKind.smtp:
        from scheduler.delivery.smtp import SmtpTransport

        return SmtpTransport.from_settings(settings, connections=connections)
    if settings.transport == TransportKind.console:
        from scheduler.delivery.console import ConsoleTransport

        return ConsoleTransport()
    from scheduler.delivery.file import FileTransport

    return FileTransport(settings.resolved_outbox_dir)
