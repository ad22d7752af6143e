"""Pick the configured end of the pipeline (ARCHITECTURE.md, invariant 7)."""

from __future__ import annotations

from scheduler.delivery.base import Transport
from scheduler.delivery.console import ConsoleTransport
from scheduler.delivery.file import FileTransport
from scheduler.delivery.smtp import SmtpTransport
from scheduler.settings import Settings, TransportKind


def make_transport(settings: Settings, *, connections: int = 1) -> Transport:
    """The transport ``MARTECH_TRANSPORT`` names; ``connections`` sizes an SMTP pool."""
    if settings.transport == TransportKind.smtp:
        return SmtpTransport.from_settings(settings, connections=connections)
    if settings.transport == TransportKind.console:
        return ConsoleTransport()
    return FileTransport(settings.resolved_outbox_dir)
