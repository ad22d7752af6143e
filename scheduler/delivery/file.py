"""The file transport: one ``.eml`` per message, like Django's file e-mail backend.

Layout: ``<outbox>/<campaign>/<run>/<delivery id or message-id>.eml``. Each file is written to a
temporary name in the same directory and renamed into place, so a reader (or a crash) never sees
half a message. No fsync: the delivery ledger is the durable record, not the outbox.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from scheduler.delivery.base import OutgoingMessage, SendOutcome

_UNSAFE = re.compile(r"[^A-Za-z0-9_.@+-]")


def _safe(part: str) -> str:
    cleaned = _UNSAFE.sub("_", part).lstrip(".")
    return cleaned[:180] or "_"


class FileTransport:
    name = "file"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._made: set[Path] = set()  # directories already created this process

    def path_for(self, message: OutgoingMessage) -> Path:
        campaign = _safe(message.campaign or "_notifications")
        run = str(message.run_id) if message.run_id is not None else "adhoc"
        stem = (str(message.delivery_id) if message.delivery_id is not None
                else _safe(message.message_id))
        return self.root / campaign / run / f"{stem}.eml"

    def write(self, message: OutgoingMessage) -> Path:
        path = self.path_for(message)
        folder = path.parent
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, message.data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path

    async def send(self, message: OutgoingMessage) -> SendOutcome:
        try:
            self.write(message)
        except OSError as exc:
            # A full disk or a permission problem is worth retrying later, not a bounce.
            return SendOutcome(ok=False, error=f"file transport: {exc}", permanent=False)
        return SendOutcome(ok=True, code=250)

    async def close(self) -> None:
        self._made.clear()
