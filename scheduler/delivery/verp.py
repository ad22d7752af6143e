"""VERP bounce addresses: ``bounces+<signed token>@domain`` names the delivery a bounce is about.

The token carries only the delivery id, signed with :class:`~scheduler.delivery.tokens.Signer`
(purpose ``bounce``) — never the recipient's address, which a bounce would otherwise echo to
whoever reads the mailbox logs. A forged or altered token verifies to nothing, so nobody can
bounce (and so suppress) someone else's delivery by guessing ids.

The signer's token is treated as opaque text; it must be a dot-atom (no quoting in the local
part), which base64url tokens are. Relays must keep a local part's case (RFC 5321 §2.4), and the
common ones do; a relay that lower-cases it turns the token into a forgery, which is refused.
"""

from __future__ import annotations

import re

from scheduler.delivery.tokens import Signer
from scheduler.errors import MartechError

BOUNCE = "bounce"
MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
_LOCAL_TOKEN = re.compile(r"^(?P<base>[^+@\s]+)\+(?P<token>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)$")


class VerpError(MartechError):
    """The bounce address cannot carry a token."""


class Verp:
    """Encodes and reads the bounce address of one deployment (``MARTECH_BOUNCE_ADDRESS``)."""

    def __init__(self, signer: Signer, bounce_address: str) -> None:
        local, sep, domain = bounce_address.strip().rpartition("@")
        if not sep or not local or not domain or "+" in local:
            raise VerpError(f"MARTECH_BOUNCE_ADDRESS {bounce_address!r}: expected a plain "
                            "address like bounces@acme.com (no '+': the token goes there)")
        self.signer = signer
        self.local = local
        self.domain = domain.lower()

    def address(self, delivery_id: int) -> str:
        token = self.signer.sign(BOUNCE, str(delivery_id))
        local = f"{self.local}+{token}"
        if _LOCAL_TOKEN.match(local) is None:
            raise VerpError("the signed token is not a dot-atom; it cannot be a local part")
        if len(local) > MAX_LOCAL_PART:
            raise VerpError(f"bounce address local part is {len(local)} characters "
                            f"(limit {MAX_LOCAL_PART}); use a shorter MARTECH_BOUNCE_ADDRESS")
        return f"{local}@{self.domain}"

    def is_ours(self, address: str) -> bool:
        """The bare bounce address or one of its ``+token`` forms (signed or not)."""
        local, _sep, domain = address.strip().strip("<>").rpartition("@")
        base = local.split("+", 1)[0]
        return domain.lower() == self.domain and base.lower() == self.local.lower()

    def delivery_id(self, address: str) -> int | None:
        """The delivery a genuine VERP address names; None for anything forged or foreign."""
        local, _sep, domain = address.strip().strip("<>").rpartition("@")
        if domain.lower() != self.domain:
            return None
        match = _LOCAL_TOKEN.match(local)
        if match is None or match["base"].lower() != self.local.lower():
            return None
        payload = self.signer.verify(BOUNCE, match["token"])
        if payload is None or not (payload.isascii() and payload.isdigit()):
            return None
        return int(payload)
