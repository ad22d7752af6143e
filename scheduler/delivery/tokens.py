"""HMAC-signed tokens for links in e-mails (ARCHITECTURE.md, invariant 9): unsubscribe, click, open.

A token is ``base64url(payload).base64url(mac)``; the MAC covers a purpose string so a click
token can never be replayed as an unsubscribe token. Verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

MAC_BYTES = 16  # 128 bits: far beyond guessing, short enough for a URL
UNSUBSCRIBE = "unsubscribe"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: str | bytes) -> None:
        self._key = secret.encode("utf-8") if isinstance(secret, str) else secret

    def _mac(self, purpose: str, payload: bytes) -> bytes:
        msg = purpose.encode("utf-8") + b"\x00" + payload
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:MAC_BYTES]

    def sign(self, purpose: str, payload: str) -> str:
        raw = payload.encode("utf-8")
        return f"{_b64(raw)}.{_b64(self._mac(purpose, raw))}"

    def verify(self, purpose: str, token: str) -> str | None:
        """The payload if the token is genuine for ``purpose``, else None."""
        try:
            body, mac = token.split(".", 1)
            raw = _unb64(body)
            given = _unb64(mac)
        except (ValueError, UnicodeError):
            return None
        if not hmac.compare_digest(given, self._mac(purpose, raw)):
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None


def unsubscribe_payload(campaign: str, email: str) -> str:
    return f"{campaign}\x1f{email}"


def parse_unsubscribe_payload(payload: str) -> tuple[str, str] | None:
    """``(campaign, email)`` from a verified unsubscribe payload."""
    campaign, sep, email = payload.partition("\x1f")
    return (campaign, email) if sep and "@" in email else None


def unsubscribe_token(signer: Signer, campaign: str, email: str) -> str:
    return signer.sign(UNSUBSCRIBE, unsubscribe_payload(campaign, email))


def verify_unsubscribe(signer: Signer, token: str) -> tuple[str, str] | None:
    payload = signer.verify(UNSUBSCRIBE, token)
    return parse_unsubscribe_payload(payload) if payload is not None else None


CLICK = "click"
OPEN = "open"
_SAFE_SCHEMES = ("http", "https")


def safe_target(url: str) -> bool:
    """Only absolute http(s) URLs without whitespace/control characters may be redirected to."""
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    scheme, sep, rest = url.partition("://")
    return bool(sep) and scheme.lower() in _SAFE_SCHEMES and rest[:1] not in ("", "/")


def click_token(signer: Signer, delivery_id: int, url: str) -> str:
    if not safe_target(url):
        raise ValueError("only http(s) links can be tracked")
    return signer.sign(CLICK, f"{delivery_id}\x1f{url}")


def verify_click(signer: Signer, token: str) -> tuple[int, str] | None:
    """``(delivery_id, url)`` from a genuine click token whose URL is safe to redirect to."""
    payload = signer.verify(CLICK, token)
    if payload is None:
        return None
    delivery, sep, url = payload.partition("\x1f")
    if not sep or not (delivery.isascii() and delivery.isdigit()) or not safe_target(url):
        return None
    return int(delivery), url


def open_token(signer: Signer, delivery_id: int) -> str:
    return signer.sign(OPEN, str(delivery_id))


def verify_open(signer: Signer, token: str) -> int | None:
    payload = signer.verify(OPEN, token)
    return int(payload) if payload is not None and payload.isascii() and payload.isdigit() else None
