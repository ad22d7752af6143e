"""TLS probe: handshake on any port, hostname verified, certificate not about to expire."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from jobs.guard.checks.base import ProbeFailed, step
from jobs.guard.checks.tlsinfo import client_context, expiry_note, expiry_problem
from scheduler.clock import Clock
from scheduler.config.checks import TlsCheck


class TlsProbe:
    kind = "tls"

    def __init__(self, spec: TlsCheck, clock: Clock) -> None:
        self.spec = spec
        self.clock = clock

    async def run(self, timeout_s: float) -> str:
        spec = self.spec
        ctx = client_context(spec.verify, spec.ca_file)
        server_name = spec.server_name or spec.host
        try:
            _reader, writer = await step(
                f"TLS handshake with {spec.host}:{spec.port}",
                asyncio.open_connection(spec.host, spec.port, ssl=ctx,
                                        server_hostname=server_name,
                                        ssl_handshake_timeout=timeout_s),
                timeout_s)
        except ssl.SSLCertVerificationError as exc:
            raise ProbeFailed(f"certificate rejected: {exc.verify_message or exc}") from None
        except ssl.SSLError as exc:
            raise ProbeFailed(f"TLS error: {exc.reason or exc}") from None
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            problem = expiry_problem(der, self.clock.now(), spec.valid_for)
            if problem:
                raise ProbeFailed(problem)
            return f"{server_name}: {expiry_note(der, self.clock.now())}"
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
