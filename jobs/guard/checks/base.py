"""What a probe returns, the protocol every probe follows, and the timeout helper they share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

Outcome = Literal["ok", "fail", "unknown"]
T = TypeVar("T")


@dataclass(frozen=True)
class CheckResult:
    """One raw observation: ``ok``, ``fail`` or ``unknown`` (the guard could not see)."""

    outcome: Outcome
    latency_ms: float
    detail: str = ""
    # Structured measurements of probes that look at many things (the page check), stored
    # beside the detail for reports; None for the one-fact probes.
    findings: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class ProbeFailed(Exception):
    """A probe found the target unhealthy; the message says which step and why."""

    def __init__(self, message: str, findings: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.findings = findings


@dataclass(frozen=True)
class ProbeReport:
    """A healthy probe's detail plus its structured findings."""

    detail: str
    findings: Mapping[str, Any]


class Probe(Protocol):
    kind: str

    async def run(self, timeout_s: float) -> str | ProbeReport:
        """Probe once; return a short detail (or a report with findings) on success.

        :raises ProbeFailed: (or any OSError / TimeoutError) when the target is unhealthy.
        """
        ...


async def step(what: str, awaitable: Awaitable[T], timeout_s: float) -> T:
    """Await one network step under its own timeout, naming the step when it fails."""
    try:
        return await asyncio.wait_for(awaitable, max(timeout_s, 0.001))
    except TimeoutError:
        raise ProbeFailed(f"{what}: timed out after {timeout_s:.1f}s") from None


class Deadline:
    """A whole-probe time budget shared by its steps (each step gets what is left)."""

    def __init__(self, timeout_s: float) -> None:
        self._end = time.monotonic() + timeout_s

    def left(self) -> float:
        return max(self._end - time.monotonic(), 0.001)


async def run_probe(probe: Probe, timeout_s: float) -> CheckResult:
    """Run ``probe`` under ``timeout_s`` overall; never raises (except cancellation)."""
    started = time.perf_counter()
    findings: Mapping[str, Any] | None = None
    try:
        # asyncio.timeout, not wait_for: no extra task per probe (1,000 checks: it shows)
        async with asyncio.timeout(timeout_s + 0.05):
            report = await probe.run(timeout_s)
        outcome: Outcome = "ok"
        if isinstance(report, ProbeReport):
            detail, findings = report.detail, report.findings
        else:
            detail = report
    except TimeoutError:
        outcome, detail = "fail", f"timed out after {timeout_s:.1f}s"
    except ProbeFailed as exc:
        outcome, detail, findings = "fail", str(exc), exc.findings
    except (OSError, ValueError) as exc:
        outcome, detail = "fail", f"{type(exc).__name__}: {exc}".strip()
    except Exception as exc:  # a probe bug must not kill the guard; it is evidence too
        outcome, detail = "fail", f"probe error {type(exc).__name__}: {exc}"
    latency_ms = (time.perf_counter() - started) * 1000.0
    # A findings-bearing detail lists several problems with their numbers: room for them.
    limit = DETAIL_LIMIT if findings is None else FINDINGS_DETAIL_LIMIT
    return CheckResult(outcome, round(latency_ms, 2), _clip(detail, limit), findings)


DETAIL_LIMIT = 300
FINDINGS_DETAIL_LIMIT = 1000


def _clip(text: str, limit: int = DETAIL_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
