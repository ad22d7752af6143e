"""Certificate facts shared by the http, smtp and tls probes: expiry and trust context."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from datetime import datetime, timedelta

from cryptography import x509

from jobs.guard.checks.base import ProbeFailed, step


def client_context(verify: bool, ca_file: str | None = None) -> ssl.SSLContext:
    """System trust (plus ``ca_file`` for an internal CA), or no verification when asked."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def not_after(der: bytes | None) -> datetime:
    if not der:
        raise ProbeFailed("tls: the server sent no certificate")
    cert = x509.load_der_x509_certificate(der)
    return cert.not_valid_after_utc


def expiry_problem(der: bytes | None, now: datetime, valid_for: timedelta | None) -> str | None:
    """None when the certificate is valid for longer than ``valid_for``; else why not."""
    end = not_after(der)
    left = end - now
    if left <= timedelta(0):
        return f"certificate expired {end:%Y-%m-%d %H:%M} UTC"
    if valid_for is not None and left < valid_for:
        return (f"certificate expires {end:%Y-%m-%d %H:%M} UTC, in {_days(left)}"
                f" (wanted more than {_days(valid_for)})")
    return None


def expiry_note(der: bytes | None, now: datetime) -> str:
    return f"cert valid {_days(not_after(der) - now)}"


def _days(delta: timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.1f}d" if days < 10 else f"{days:.0f}d"


async def peer_cert(host: str, port: int, ctx: ssl.SSLContext, server_name: str,
                    timeout_s: float) -> bytes | None:
    """Handshake with ``host:port`` and return the server's certificate (DER)."""
    _reader, writer = await step(
        f"TLS handshake with {host}:{port}",
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=server_name,
                                ssl_handshake_timeout=timeout_s), timeout_s)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return ssl_object.getpeercert(binary_form=True) if ssl_object else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
