"""SMTP probe: the relay campaigns send through — EHLO, STARTTLS, EHLO again, AUTH, QUIT."""

from __future__ import annotations

import contextlib

import aiosmtplib

from jobs.guard.checks.base import Deadline, ProbeFailed, step
from jobs.guard.checks.tlsinfo import client_context
from scheduler.config.checks import SmtpCheck


class SmtpProbe:
    kind = "smtp"

    def __init__(self, spec: SmtpCheck, helo_name: str | None = None) -> None:
        self.spec = spec
        self.helo_name = helo_name

    async def run(self, timeout_s: float) -> str:
        spec = self.spec
        deadline = Deadline(timeout_s)
        tls_context = client_context(spec.verify_tls, spec.ca_file)
        client = aiosmtplib.SMTP(
            hostname=spec.host, port=spec.port, use_tls=spec.tls, start_tls=False,
            timeout=timeout_s, tls_context=tls_context, local_hostname=self.helo_name,
        )
        notes: list[str] = []
        try:
            await step("connect", client.connect(), deadline.left())
            await step("EHLO", client.ehlo(), deadline.left())
            if spec.starttls:
                if not client.supports_extension("starttls"):
                    raise ProbeFailed("STARTTLS not offered")
                await step("STARTTLS", client.starttls(tls_context=tls_context),
                           deadline.left())
                await step("EHLO after STARTTLS", client.ehlo(), deadline.left())
                notes.append("STARTTLS ok")
            if spec.expect_auth:
                if not client.supports_extension("auth"):
                    raise ProbeFailed("AUTH not advertised")
                notes.append("AUTH " + " ".join(sorted(client.server_auth_methods)))
            await step("QUIT", client.quit(), deadline.left())
        except aiosmtplib.SMTPException as exc:
            raise ProbeFailed(f"smtp: {type(exc).__name__}: {exc}") from None
        finally:
            if client.is_connected:
                with contextlib.suppress(Exception):
                    client.close()
        return ", ".join(["EHLO ok", *notes])
