"""DNS probe: the name resolves (optionally to the expected answers) at a given nameserver."""

from __future__ import annotations

import dns.asyncresolver
import dns.exception
import dns.resolver

from jobs.guard.checks.base import ProbeFailed
from scheduler.config.checks import DnsCheck


class DnsProbe:
    kind = "dns"

    def __init__(self, spec: DnsCheck) -> None:
        self.spec = spec

    def _resolver(self, timeout_s: float) -> dns.asyncresolver.Resolver:
        if self.spec.nameserver:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [self.spec.nameserver]
            resolver.port = self.spec.port
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.timeout = timeout_s  # per attempt
        resolver.lifetime = timeout_s  # whole query, retries included
        return resolver

    async def run(self, timeout_s: float) -> str:
        spec = self.spec
        try:
            answer = await self._resolver(timeout_s).resolve(spec.name, spec.record_type)
        except dns.resolver.NXDOMAIN:
            raise ProbeFailed(f"{spec.name}: no such name (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise ProbeFailed(f"{spec.name}: no {spec.record_type} record") from None
        except dns.resolver.LifetimeTimeout:
            raise ProbeFailed(f"{spec.name}: resolver timed out after {timeout_s:.1f}s") from None
        except dns.exception.DNSException as exc:
            raise ProbeFailed(f"{spec.name}: {type(exc).__name__}: {exc}") from None
        got = sorted(_text(rdata.to_text()) for rdata in answer)
        if spec.expect:
            want = sorted(_text(x) for x in spec.expect)
            if not set(want) <= set(got):
                raise ProbeFailed(f"{spec.name} {spec.record_type} is {', '.join(got)}; "
                                  f"expected {', '.join(want)}")
        return f"{spec.record_type} {', '.join(got)}"


def _text(value: str) -> str:
    return value.strip().strip('"').rstrip(".").lower()
