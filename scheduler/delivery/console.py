"""The console transport: print each message to a stream (stdout by default), for development."""

from __future__ import annotations

import sys
from typing import TextIO

from scheduler.delivery.base import OutgoingMessage, SendOutcome

SEPARATOR = "-" * 72


class ConsoleTransport:
    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    async def send(self, message: OutgoingMessage) -> SendOutcome:
        stream = self.stream or sys.stdout
        text = message.data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        stream.write(f"{SEPARATOR}\nEnvelope-From: {message.envelope_from}\n"
                     f"Envelope-To: {', '.join(message.recipients)}\n{text}\n")
        stream.flush()
        return SendOutcome(ok=True, code=250)

    async def close(self) -> None:
        return None
