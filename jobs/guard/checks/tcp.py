"""TCP probe: the port accepts a connection."""

from __future__ import annotations

import asyncio
import contextlib

from jobs.guard.checks.base import step
from scheduler.config.checks import TcpCheck


class TcpProbe:
    kind = "tcp"

    def __init__(self, spec: TcpCheck) -> None:
        self.spec = spec

    async def run(self, timeout_s: float) -> str:
        where = f"{self.spec.host}:{self.spec.port}"
        _reader, writer = await step(f"connect {where}",
                                     asyncio.open_connection(self.spec.host, self.spec.port),
                                     timeout_s)
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        return f"connected to {where}"
