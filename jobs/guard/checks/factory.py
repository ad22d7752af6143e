"""Build the probe a check's config describes."""

from __future__ import annotations

import aiohttp

from jobs.guard.checks.base import Probe
from jobs.guard.checks.dns import DnsProbe
from jobs.guard.checks.http import HttpProbe
from jobs.guard.checks.page import PageProbe
from jobs.guard.checks.smtp import SmtpProbe
from jobs.guard.checks.tcp import TcpProbe
from jobs.guard.checks.tls import TlsProbe
from scheduler.clock import Clock
from scheduler.config.checks import CheckConfig


def build_probe(check: CheckConfig, session: aiohttp.ClientSession, clock: Clock,
                helo_name: str | None = None) -> Probe:
    if check.http is not None:
        return HttpProbe(check.http, session, clock)
    if check.page is not None:
        return PageProbe(check.page, session)
    if check.tcp is not None:
        return TcpProbe(check.tcp)
    if check.dns is not None:
        return DnsProbe(check.dns)
    if check.smtp is not None:
        return SmtpProbe(check.smtp, helo_name)
    if check.tls is not None:
        return TlsProbe(check.tls, clock)
    raise AssertionError("CheckConfig guarantees exactly one probe")
